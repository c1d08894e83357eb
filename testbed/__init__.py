"""testbed: a multiprocess concurrency testbed for hypervisor mapcache designs."""

import hashlib
import os
from pathlib import Path

__version__ = "0.1.0"

# testbed.shared and testbed.workers: installed (a wheel) they are folders of this
# package; in the repository they are the top-level shared/ and workers/ folders
# (pyproject.toml maps them). A checkout on PYTHONPATH, or any copy of the tree,
# finds them there, and no top-level "shared" or "workers" module is ever importable.
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _sub in ("shared", "workers"):
    if not os.path.isdir(os.path.join(_HERE, _sub)) and os.path.isfile(os.path.join(_ROOT, _sub, "__init__.py")):
        import importlib.util as _ilu
        import sys as _sys

        _spec = _ilu.spec_from_file_location(f"{__name__}.{_sub}", os.path.join(_ROOT, _sub, "__init__.py"),
                                             submodule_search_locations=[os.path.join(_ROOT, _sub)])
        _mod = _ilu.module_from_spec(_spec)
        _sys.modules[_spec.name] = _mod
        _spec.loader.exec_module(_mod)
        globals()[_sub] = _mod


def _numba_cache_dir() -> str:
    """A numba cache directory keyed by the source of every compiled module.

    Numba checks only the defining file of a cached function; the operation
    loop calls into the variants, the TLB and the atomics, so a change in any of
    them must start a fresh cache, not reuse stale machine code.
    """
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(here.rglob("*.py")):
        h.update(path.relative_to(here).as_posix().encode())
        h.update(path.read_bytes())
    base = os.environ.get("TESTBED_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "testbed"
    )
    return os.path.join(base, "numba-" + h.hexdigest()[:16])


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
    try:
        import numba.core.config as _nbconfig

        _nbconfig.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
    except ImportError:  # pragma: no cover - numba is a hard dependency
        pass
