"""An installed wheel works on its own and puts no top-level ``shared`` or ``workers`` module on the path.

The repository keeps ``shared/`` and ``workers/`` at its top level; pyproject.toml
installs them as ``testbed.shared`` and ``testbed.workers``. The test builds a
wheel of the checkout, installs it (not editable) into a fresh virtual
environment and, from a directory outside the checkout, runs a real
``testbed run`` and tries ``import shared``.

The fresh environment finds the dependencies (numpy, numba, ...) through a
plain path line to this interpreter's site-packages folders, so nothing is
downloaded for them and no other installation's import hooks (an editable
``testbed`` elsewhere) are run in it. Building the wheel needs setuptools'
``wheel`` support or, failing that, the package index for an isolated build;
where neither is at hand the test is skipped and says why.

Mutation that makes it fail: in pyproject.toml replace the ``[tool.setuptools]``
packages and package-dir tables by ``[tool.setuptools.packages.find]`` with
``include = ["testbed*", "workers*", "shared*"]`` (the old layout): ``import shared``
then succeeds in the fresh environment.
"""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import venv
import zipfile

import pytest

from conftest import REPO, heavy_lock

# The real run compiles the kernels afresh for the installed copy: about 75 s in all on a
# loaded 2-core host, so it runs only with TESTBED_SLOW=1; the wheel, the fresh environment,
# the imports and `testbed variants` (about 15 s) run in the default suite.
SLOW = pytest.mark.skipif(not os.environ.get("TESTBED_SLOW"),
                          reason="compiles the kernels of an installed wheel (about a minute): "
                                 "TESTBED_SLOW=1 python -m pytest tests/test_packaging.py")


def _build_wheel(out) -> str:
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)]
    if importlib.util.find_spec("wheel") is not None:
        cmd.insert(5, "--no-build-isolation")      # offline when setuptools can build wheels itself
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=out)
    if r.returncode != 0:
        pytest.skip(f"could not build a wheel (offline, no 'wheel' package?): {r.stderr.strip()[-300:]}")
    wheels = [p for p in os.listdir(out) if p.endswith(".whl")]
    assert len(wheels) == 1, wheels
    return os.path.join(out, wheels[0])


def _dependency_paths() -> list[str]:
    """The folders the dependencies are imported from (site-packages), not the checkout."""
    paths = set(site.getsitepackages())
    for mod in ("numpy", "numba", "llvmlite", "multiprocess", "psutil", "rich", "matplotlib", "submitit"):
        spec = importlib.util.find_spec(mod)
        if spec and spec.origin:
            paths.add(os.path.dirname(os.path.dirname(spec.origin)))
    return sorted(p for p in paths if os.path.isdir(p) and os.path.realpath(p) != os.path.realpath(REPO))


class Installed:
    def __init__(self, root):
        self.root = root
        build = root / "build"
        build.mkdir()
        self.wheel = _build_wheel(build)
        env_dir = root / "venv"
        venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
        self.py = env_dir / "bin" / "python"
        self.testbed = env_dir / "bin" / "testbed"
        self.purelib = subprocess.run([str(self.py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(self.purelib, "testbed-deps.pth"), "w") as f:
            f.write("\n".join(_dependency_paths()) + "\n")
        r = subprocess.run([sys.executable, "-m", "pip", "--python", str(self.py), "install", "-q", "--no-deps",
                            "--no-index", "--ignore-installed", self.wheel], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        self.outside = root / "elsewhere"
        self.outside.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NUMBA_"))}
        self.env["TESTBED_CACHE_DIR"] = str(root / "cache")
        self.env["PYTHONNOUSERSITE"] = "1"

    def run(self, *args, timeout=60):
        return subprocess.run([*map(str, args)], cwd=self.outside, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return Installed(tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_only_the_testbed_package_and_its_data(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"testbed"}, tops
    for needed in ("testbed/schema.json", "testbed/csrc/testbed_op.c", "testbed/csrc/ticket_lock.h",
                   "testbed/csrc/xen/shim.h", "testbed/csrc/xen/shim_sched.h", "testbed/csrc/xen/glue.c",
                   "testbed/shared/arena.py",
                   "testbed/shared/futex.py", "testbed/workers/vcpu.py", "testbed/workers/sched.py",
                   "testbed/variants/contract.py"):
        assert needed in names, needed


def test_installed_wheel_imports_its_own_copy_and_no_top_level_shared(installed):
    for name in ("shared", "workers"):
        r = installed.run(installed.py, "-c", f"import {name}")
        assert r.returncode != 0 and f"ModuleNotFoundError: No module named '{name}'" in r.stderr, (name, r.stderr)
    r = installed.run(installed.py, "-c", "import testbed, testbed.shared, testbed.workers.vcpu as v, testbed.native as n; "
                                          "print(testbed.__file__); print(v.__file__); print(n.__file__)")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split():
        assert line.startswith(installed.purelib), (line, installed.purelib)     # the wheel's copy, not the checkout
    r = installed.run(installed.testbed, "variants")
    assert r.returncode == 0 and "lockless" in r.stdout, r.stdout + r.stderr


@SLOW
def test_installed_wheel_runs_a_real_run(installed):
    with heavy_lock():                                          # a compile and a 2-vCPU run take both CPUs
        r = installed.run(installed.testbed, "run", "--variant", "lockless", "--vcpus", "2", "--duration", "2",
                          "--json", installed.outside / "out.json", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "SUCCESS" in r.stdout
    assert (installed.outside / "out.json").exists()
