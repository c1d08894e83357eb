"""The registry is the only place that knows variants: adding one is a module and one line.

The variant test works on a temporary copy of the package (``testbed``,
``shared``, ``workers``) and runs it in a subprocess whose ``PYTHONPATH``
points at the copy, so the installed package is untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, cli_env

THROWAWAY = "throwaway"


def _copy(tmp_path):
    root = tmp_path / "pkg"
    for name in ("testbed", "shared", "workers"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _env(root, cache, jit=True):
    env = cli_env({"PYTHONPATH": str(root), "TESTBED_CACHE_DIR": str(cache)})
    env.pop("NUMBA_CACHE_DIR", None)      # set by the parent's import of testbed: the copy keys its own
    if not jit:
        env["NUMBA_DISABLE_JIT"] = "1"
    return env


def _add_throwaway(root):
    """Step 1: the module (directmap under another name). Step 2: one registry line. Nothing else."""
    variants = root / "testbed" / "variants"
    src = (variants / "directmap.py").read_text()
    src = src.replace('NAME = "directmap"', f'NAME = "{THROWAWAY}"')
    src = src.replace('DESCRIPTION = "', 'DESCRIPTION = "a copy of directmap: ')
    (variants / f"{THROWAWAY}.py").write_text(src)
    reg = variants / "__init__.py"
    text = reg.read_text()
    line = '    real("directmap", baseline=True),\n'
    assert line in text
    reg.write_text(text.replace(line, line + f'    real("{THROWAWAY}"),\n'))


def _python(root, cache, code, env=None):
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env or _env(root, cache), capture_output=True,
                          text=True, timeout=120)


SLOW = pytest.mark.skipif(not os.environ.get("TESTBED_SLOW"),
                          reason="compiles a fresh kernel cache (a minute or two): run with TESTBED_SLOW=1")


@pytest.mark.parametrize("jit", [pytest.param(False, id="interpreted"), pytest.param(True, id="compiled", marks=SLOW)])
def test_a_new_variant_is_one_module_and_one_registry_line(tmp_path, jit, exclusive, no_leftovers):
    """Interpreted by default (NUMBA_DISABLE_JIT: the same code paths, no minute of compiling).

    Mutation: hard-code the dispatch's module list instead of reading the registry and this fails.
    """
    root = _copy(tmp_path)
    cache = tmp_path / "cache"
    before = _python(root, cache, "import os, testbed; print(os.environ['NUMBA_CACHE_DIR'])").stdout.strip()
    _add_throwaway(root)
    out = _python(root, cache, "import os, testbed; print(testbed.__file__); print(os.environ['NUMBA_CACHE_DIR'])")
    assert out.returncode == 0, out.stderr
    where, after = out.stdout.split()
    assert where.startswith(str(root)), f"the subprocess imported {where}, not the copy"
    # the kernel cache is keyed by every source file: the registry line alone starts a fresh one
    assert after != before and after.startswith(str(cache))

    listing = subprocess.run([sys.executable, "-m", "testbed", "variants"], cwd=root, env=_env(root, cache),
                             capture_output=True, text=True, timeout=120)
    assert re.search(rf"^{THROWAWAY}\s+a copy of directmap", listing.stdout, re.M), listing.stdout

    run = subprocess.run([sys.executable, "-m", "testbed", "run", "--variant", THROWAWAY, "--vcpus", "1",
                          "--duration", "0.3", "--warmup", "0", "--frames", "64", "--quiet", "--seed", "5"],
                         cwd=root, env=_env(root, cache, jit), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"variant {THROWAWAY}" in run.stdout and "verdict: SUCCESS" in run.stdout
    # the generated dispatch of the copy calls the new module, with its own id
    gen = list(cache.rglob("dispatch_*.py"))
    assert any(f"import testbed.variants.{THROWAWAY} as v1" in p.read_text() for p in gen), gen


CACHE_PROBE = """
from numba.core import config as nbconfig
from testbed import config, harness, loops
from testbed.variants import dispatch
cfg = config.validate(config.RunConfig(variant="percpu", vcpus=1, frames=64))
harness.compile_kernels(cfg, config.params(cfg))
s = loops.loop(config.params(cfg)).stats     # the compiled loop of percpu
print(len(s.cache_hits), len(s.cache_misses), dispatch.GENERATED.__file__.startswith(nbconfig.CACHE_DIR))
"""


def test_a_second_process_loads_the_kernels_from_the_disk_cache(tmp_path, exclusive):
    """The generated dispatch keeps numba's disk cache working: the second process compiles nothing.

    Mutation: generate the dispatch with exec() into a module that has no file (numba then
    cannot cache the loop that inlines it) and the second process reports a miss.
    """
    env = cli_env()                       # the installed package and its usual cache
    first = _python(REPO, None, CACHE_PROBE, env)
    assert first.returncode == 0, first.stderr
    second = _python(REPO, None, CACHE_PROBE, env)
    assert second.returncode == 0, second.stderr
    hits, misses, in_cache = second.stdout.split()
    assert (int(hits), int(misses), in_cache) == (1, 0, "True"), (first.stdout, second.stdout)
