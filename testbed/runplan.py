"""A run's plan: its configuration validated once, with what follows from it (conventions 2 and 6).

``plan(cfg)`` looks the design up in the registry (the one look-up by name of a run),
validates the config against it, and keeps the design, the arena's layout and the
kernels' parameter array beside it. The harness runs a plan as it is: it never asks
the registry again, nor validates again. ``checked`` is the plan step of a command:
``validate``, the domain's memory and the vCPUs' placement on this host, for every run
it will make, before the first starts.

Also here, for the harness and for tests that drive the kernels on private state: the
arena's layout (``build_layout``), its initial state, and the compile of a design's
loop before anything forks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from testbed.shared import Field, Layout

from . import abi, irq, kernels, limits, numa, tlb
from . import config as cfgmod
from . import variants as registry
from .errors import UsageError
from .topology import allowed_cpus, host_topology, place, require_live_host


@dataclass(frozen=True, eq=False)
class RunPlan:
    cfg: cfgmod.RunConfig          # validated and resolved
    variant: registry.Variant      # its registry entry: the design's module, id, fault bits, locks
    layout: Layout                 # the arena (rows not page-aligned; ``paged`` aligns them)
    params: np.ndarray             # the kernels' parameter array, before the host's part (the scheduler)

    @property
    def module(self):
        return self.variant.module


def plan(cfg: cfgmod.RunConfig) -> RunPlan:
    """The plan of one run; UsageError as ``config.validate`` raises it."""
    v = registry.get(cfg.variant)
    cfg = cfgmod.validate(cfg, v)
    p = cfgmod.params(cfg, v)
    return RunPlan(cfg, v, build_layout(cfg, v.module), p)


def checked(cfg: cfgmod.RunConfig) -> cfgmod.RunConfig:
    """``validate``, and the vCPUs placed on this host's allowed CPUs (or UsageError): what every
    command checks, for every run it will make, before the first starts."""
    require_live_host()
    v = registry.get(cfg.variant)
    cfg = cfgmod.validate(cfg, v)
    _check_domain_memory(cfg, v.module)
    topo = host_topology()
    place(topo, allowed_cpus(topo, cfg.cpus, ordered=cfg.placement == "given"), cfg.vcpus, cfg.oversubscribe,
          cfg.placement)
    numa.check_home(topo, cfg.numa_home)
    return cfg


def _check_domain_memory(cfg: cfgmod.RunConfig, module) -> None:
    """The shared arena of a domain must fit in the memory available now (UsageError otherwise)."""
    size = build_layout(cfg, module).size
    avail = limits.available_bytes()
    if avail is not None and size > avail:
        what = (f"--domain-vcpus {cfg.domain_vcpus}" if cfg.domain_vcpus > cfg.vcpus else f"--frames {cfg.frames}")
        raise UsageError(f"{what}: the domain's shared state needs {size >> 20} MiB ({cfg.domain_vcpus} vCPUs of "
                         f"{cfg.entries} slots, {cfg.frames} frames), but only {avail >> 20} MiB are available; "
                         "lower --domain-vcpus, --entries or --frames")


def build_layout(cfg: cfgmod.RunConfig, module=None, page_rows: bool = False) -> Layout:
    """The arena: the domain's state (``dom``, ``pte``, ``dbits``, ``vst``) sized for its
    ``domain_vcpus`` (Xen's max_vcpus), and what belongs to the running vCPU processes (their
    counters, mailboxes, histograms, live mappings, expectations, frame counter lines) for the
    ``vcpus`` of them that run. Idle vCPUs are state only: blocked in Xen, they never run.
    ``page_rows`` (NUMA placement, testbed/numa.py): every array and every per-vCPU row starts a
    page, so that each page belongs to one vCPU or to the domain."""
    dom_words, bit_words, row_words = (module or registry.get(cfg.variant).module).state_shape(cfg)
    V, D = cfg.vcpus, cfgmod.domain_vcpus(cfg)
    layout = Layout((
        Field("ctl", "int64", (abi.N_CTL,)),
        Field("runq", "int64", (abi.RQ_RING + V,)),
        Field("dom", "int64", (max(dom_words, 8),)),
        Field("pte", "int64", (max(D * cfg.entries, 1),)),
        Field("dbits", "int64", (max(bit_words, 1),)),
        Field("vst", "int64", (D, max(row_words, abi.V_RESERVED)), per_vcpu=True),
        Field("stats", "int64", (V, abi.N_STATS), per_vcpu=True),
        Field("mail", "int64", (V, abi.N_MAIL), per_vcpu=True),
        Field("hist", "int64", (V, abi.LAT_BINS), per_vcpu=True),
        Field("live", "int64", (V, 2 * cfgmod.held_most(cfg)), per_vcpu=True),
        Field("expect", "int64", (V, cfg.frames), per_vcpu=True),
        Field("frames", "int64", (cfg.frames, abi.frame_words(V))),
    ))
    return paged(layout) if page_rows else layout


def paged(layout: Layout) -> Layout:
    """``layout`` with every array and every per-vCPU row starting a page (``build_layout``)."""
    return Layout(tuple(dataclasses.replace(f, align=numa.PAGE) for f in layout.fields))


def init_state(views: dict, cfg: cfgmod.RunConfig, module=None) -> None:
    views["frames"][:, 0] = np.arange(cfg.frames, dtype=np.int64)
    views["dom"][tlb.D_TLBCLOCK] = 1
    for v in range(cfg.vcpus):      # the interrupt generators (testbed/irq.py), apart from the workload's
        views["vst"][v, abi.V_IRQ_RNG] = kernels.seed_state(cfg.seed, v + irq.STREAM)[0].view(np.int64)
    (module or registry.get(cfg.variant).module).init_state(views, cfg)


def private_state(cfg: cfgmod.RunConfig, p: np.ndarray, module=None) -> tuple:
    """Fresh arrays of ``cfg``'s layout in private memory, initialised, with vCPU 0's TLB:
    (views, tlb, the arguments of ``loops.run_ops`` after (n, vcpu) for vCPU 0)."""
    module = module or registry.get(cfg.variant).module
    layout = build_layout(cfg, module)
    views = layout.views(bytearray(layout.size))
    init_state(views, cfg, module)
    tlbv = tlb.make_tlb(int(p[abi.P_TLB_SETS]), int(p[abi.P_TLB_WAYS]))
    return views, tlbv, abi.kernel_args(views, p, tlbv, kernels.seed_state(cfg.seed, 0))


def compile_kernels(cfg: cfgmod.RunConfig, p: np.ndarray, module=None) -> None:
    """Compile (or load from the on-disk cache) the loop, on private throwaway state.

    Done in the parent before forking, so that every worker inherits the code.
    """
    module = module or registry.get(cfg.variant).module
    views, tlbv, args = private_state(cfg, p, module)
    module.runner(cfg)(1, 0, *args)
    # The context-switch flush a vCPU runs between chunks: compiled here too, or every vCPU
    # would compile (or load) it on its first switch, seconds of CPU each.
    tlb.flush_all(tlbv, p, views["dom"], views["vst"][0], views["stats"][0])
