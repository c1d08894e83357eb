"""A new design is three files and one registry line, as docs/variants.md says.

On a temporary copy of the checkout (the package and the tests), the test adds a
throw-away design the documented way: ``testbed/variants/throwaway.py``,
``testbed/csrc/variants/throwaway.h``, ``tests/designs/throwaway.py`` (kmap-local's
three under another name) and one ``real(...)`` line in the registry; it checks
that nothing else in the copy changed, then runs the copy's own tests that cover
designs, selected to the new one: the parts meta-test, the full runs through the
harness, the C port against the compiled loop word for word, the reference-model
differential (sequences, fill, corruptions) and the interrupt sequences. A
second process of pytest runs them (its own kernel cache: the copy's sources
differ), so the slow tier only (a fresh compile of the designs, minutes).

The negative control leaves the C file out (``_add_throwaway(root, c_file=False)``):
the copy's meta-test must then fail, naming the design and the file.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, cli_env

NAME = "throwaway"
SLOW = pytest.mark.skipif(not os.environ.get("TESTBED_SLOW"),
                          reason="compiles a fresh kernel cache and runs a design's tests (minutes): TESTBED_SLOW=1")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
TREES = ("testbed", "shared", "workers", "tests")


def _copy(tmp_path):
    root = tmp_path / "checkout"
    for name in TREES:
        shutil.copytree(REPO / name, root / name, ignore=IGNORE)
    for name in ("pyproject.toml",):
        shutil.copy(REPO / name, root / name)
    return root


def _rename(text: str) -> str:
    """kmap-local's text as the throw-away design's: its names, its C functions, its C constants."""
    text = text.replace("kmap_local", NAME).replace("kmap-local", NAME).replace("KmapLocalModel", "ThrowawayModel")
    return re.sub(r"\bKM_", "TW_", text)


def _add_throwaway(root, c_file: bool = True):
    """The three files and the registry line, nothing else."""
    for rel in ("testbed/variants/{}.py", "testbed/csrc/variants/{}.h", "tests/designs/{}.py"):
        if rel.endswith(".h") and not c_file:
            continue
        src = (root / rel.format("kmap_local")).read_text()
        (root / rel.format(NAME)).write_text(_rename(src))
    reg = root / "testbed" / "variants" / "__init__.py"
    text = reg.read_text()
    line = '    real("kmap_local"),\n'
    assert line in text
    reg.write_text(text.replace(line, line + f'    real("{NAME}"),\n'))


def _changed(root) -> list[str]:
    """The files of the copy that are new or differ from the checkout's."""
    out = []

    def walk(cmp: filecmp.dircmp, rel: str):
        out.extend(f"{rel}{n}" for n in cmp.left_only + cmp.diff_files)
        for sub, c in cmp.subdirs.items():
            walk(c, f"{rel}{sub}/")

    for name in TREES:
        walk(filecmp.dircmp(root / name, REPO / name, ignore=["__pycache__", ".pytest_cache", ".hypothesis"]),
             f"{name}/")
    return sorted(out)


def test_the_throwaway_design_touches_three_files_and_the_registry(tmp_path):
    root = _copy(tmp_path)
    _add_throwaway(root)
    assert _changed(root) == sorted([f"testbed/variants/{NAME}.py", f"testbed/csrc/variants/{NAME}.h",
                                     f"tests/designs/{NAME}.py", "testbed/variants/__init__.py"])


def _pytest(root, tmp_path, *args, timeout=3000):
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = cli_env({"PYTHONPATH": str(root), "TESTBED_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp)})
    env.pop("NUMBA_CACHE_DIR", None)      # the copy keys its own cache by its own sources
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


COVERING = ("tests/test_variants.py", "tests/test_native.py", "tests/test_model.py", "tests/test_irq.py",
            "tests/test_shipped_loop.py")


@SLOW
def test_a_throwaway_design_runs_through_every_test_that_covers_designs(tmp_path, exclusive):
    root = _copy(tmp_path)
    _add_throwaway(root)
    r = _pytest(root, tmp_path, *COVERING, "-k", f"{NAME} or all_its_parts", "-rA")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    passed = [ln for ln in r.stdout.splitlines() if ln.startswith("PASSED")]
    # each covering test reached the new design: the meta-test, full runs, the C port, the model, interrupts
    for what in ("test_every_registered_design_has_all_its_parts", f"test_real_variants_pass_every_check[{NAME}-",
                 f"test_same_counters_as_compiled_loop[256-{NAME}-", f"test_design_matches_model[{NAME}-",
                 f"test_fill_to_exhaustion_matches_model[{NAME}-",
                 f"test_interrupts_at_chosen_points_match_the_model[{NAME}]",
                 f"test_shipped_loop_matches_model[{NAME}-"):
        assert any(what in ln for ln in passed), (what, out[-4000:])


@SLOW
def test_a_design_without_its_c_file_fails_the_copy(tmp_path, exclusive):
    """The negative control: the module, the test file and the registry line, no C file."""
    root = _copy(tmp_path)
    _add_throwaway(root, c_file=False)
    r = _pytest(root, tmp_path, "tests/test_variants.py", "-k", "all_its_parts", timeout=600)
    assert r.returncode != 0 and f"{NAME}: no C map and unmap" in r.stdout, r.stdout[-3000:]
