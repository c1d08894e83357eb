"""Declarative layout of the shared-memory arena.

A layout is a list of named arrays, each with a dtype and a shape. Every array
starts on a cache-line boundary. An array marked ``per_vcpu`` has one row per
vCPU, and each row is padded to a whole number of cache lines, so that what one
vCPU alone writes never shares a line with what another writes (docs/variants.md, conventions 5).
The padding is part of the array: a per-vCPU array of logical shape
``(vcpus, n)`` is handed out as ``(vcpus, padded_n)``, C-contiguous, which keeps
the views cheap for compiled kernels; columns past ``n`` are never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CACHE_LINE = 64


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    shape: tuple[int, ...]
    per_vcpu: bool = False
    align: int = CACHE_LINE     # the array's start, and each per-vCPU row's size, a multiple of this


    def padded_shape(self) -> tuple[int, ...]:
        if not self.per_vcpu:
            return self.shape
        itemsize = np.dtype(self.dtype).itemsize
        rows, *rest = self.shape
        row_items = int(np.prod(rest, dtype=np.int64)) if rest else 1
        # A row of several axes is exposed flat: (rows, padded items per row).
        # Rows are whole cache lines and whole items: round up to a multiple of lcm(line, item).
        row_bytes = _round_up(max(row_items * itemsize, 1), math.lcm(CACHE_LINE, self.align, itemsize))
        return (rows, row_bytes // itemsize)

    def nbytes(self) -> int:
        return int(np.prod(self.padded_shape(), dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Layout:
    """Named arrays placed one after another, each cache-line aligned."""

    fields: tuple[Field, ...]

    def __post_init__(self):
        names = [f.name for f in self.fields]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"layout has duplicate array names: {sorted(dup)}")
        for f in self.fields:
            if any(d < 0 for d in f.shape):
                raise ValueError(f"layout array {f.name!r} has a negative dimension {f.shape}")

    def offsets(self) -> dict[str, int]:
        out, pos = {}, 0
        for f in self.fields:
            pos = _round_up(pos, f.align)
            out[f.name] = pos
            pos = _round_up(pos + f.nbytes(), CACHE_LINE)
        return out

    @property
    def size(self) -> int:
        pos = 0
        for f in self.fields:
            pos = _round_up(_round_up(pos, f.align) + f.nbytes(), CACHE_LINE)
        return max(pos, CACHE_LINE)

    def views(self, buf) -> dict[str, np.ndarray]:
        """Numpy views of every array over ``buf`` (a buffer of at least ``size`` bytes)."""
        offs = self.offsets()
        out = {}
        for f in self.fields:
            shape = f.padded_shape()
            count = int(np.prod(shape, dtype=np.int64))
            out[f.name] = np.ndarray(shape, dtype=f.dtype, buffer=buf, offset=offs[f.name]) if count else np.zeros(shape, f.dtype)
            assert count == 0 or out[f.name].size == count
        return out

    def __add__(self, other: "Layout") -> "Layout":
        return Layout(self.fields + other.fields)
