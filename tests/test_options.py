"""Each run option is declared once (config.RunConfig) and reaches the command line, the config and the kernels.

Mutations that make these tests fail: in config.params drop the loop over declared slots
(test_every_slotted_option_reaches_the_parameter_array); declare a field with ``cli=False`` that
has no other way in (test_every_declared_option_is_a_run_option); in textreport.replay_command skip
floats (test_replay_command_reproduces_the_config).
"""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from testbed import abi, cli, config, textreport
from testbed.config import RunConfig

DECLARED = [f for f in dataclasses.fields(RunConfig) if f.metadata.get("cli")]


def _flag(f) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _parse(*argv):
    return cli.build_parser().parse_args(["run", "--vcpus", "2", "--seed", "1", *argv])


def test_every_declared_option_is_a_run_option():
    ap = cli.build_parser()
    run = ap._subparsers._group_actions[0].choices["run"]
    flags = {o for a in run._actions for o in a.option_strings}
    for f in DECLARED:
        assert _flag(f) in flags, f.name
    # and the config built from the defaults is RunConfig's own defaults (but for the commands' own)
    cfg = cli.config_from(_parse())
    for f in DECLARED:
        assert getattr(cfg, f.name) == f.default, f.name


@pytest.mark.parametrize("f", [f for f in DECLARED if f.metadata["slot"] is not None], ids=lambda f: f.name)
def test_every_slotted_option_reaches_the_parameter_array(f):
    value = {"frames": 1024, "working_set": 100, "entries": 32, "hash_entries": 16, "levels": 3, "nest": 5,
             "tlb_ways": 8, "burst": 3, "panic_streak": 7, "lat_every": 5, "hot_set": 4}.get(f.name, 11)
    argv = [_flag(f), str(value)] + (["--variant", "lockless"] if f.name == "entries" else [])
    argv += ["--workload", "guest"] if f.name == "guest_pages" else []    # the guest's pages exist on hypercall workloads
    cfg = config.validate(cli.config_from(_parse(*argv)))
    assert getattr(cfg, f.name) == value
    assert config.params(cfg)[f.metadata["slot"]] == value


def test_slots_are_distinct_parameters():
    slots = [f.metadata["slot"] for f in dataclasses.fields(RunConfig) if f.metadata.get("slot") is not None]
    assert len(slots) == len(set(slots)) and all(0 <= s < abi.N_PARAMS for s in slots)


def test_replay_command_reproduces_the_config():
    argv = ["--variant", "locked", "--lock", "mcs", "--frames", "512", "--slack-us", "12.5", "--oversubscribe",
            "--hash", "4", "--warmup", "0", "--sched", "host"]
    cfg = config.validate(cli.config_from(_parse(*argv)))
    line = textreport.replay_command(cfg.as_dict())
    assert line.startswith("testbed run ")
    again = config.validate(cli.config_from(cli.build_parser().parse_args(shlex.split(line)[1:])))
    assert again == cfg, line
