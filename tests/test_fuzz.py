"""Bad input never reaches a traceback: the option parser and config validation, fuzzed."""

import io
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed import cli
from testbed.config import RunConfig, validate
from testbed.errors import UsageError

NUMBERS = st.one_of(st.integers(-10, 5000), st.floats(allow_nan=True, allow_infinity=True, width=32))
TOKENS = st.one_of(
    st.sampled_from(["--vcpus", "--duration", "--warmup", "--cpus", "--variant", "--workload", "--entries", "--hash",
                     "--levels", "--nest", "--frames", "--working-set", "--tlb-entries", "--tlb-ways", "--seed",
                     "--oversubscribe", "--unchecked", "--burst", "--slack-us", "--chunk-ms", "--lat-every",
                     "locked", "lockless", "directmap", "nosuch", "all", "0-1", "0,1", "1-0", "", "-1", "nan"]),
    NUMBERS.map(str),
    st.text(max_size=6),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS, max_size=8))
def test_run_options_give_usage_errors_or_a_valid_config(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = cli.build_parser().parse_args(["run", *argv])
        except SystemExit as e:
            assert e.code == 2
            lines = err.getvalue().splitlines()
            assert len(lines) == 1 and lines[0].startswith("testbed"), lines
            return
    try:
        cfg = cli.checked_config(args)
    except UsageError as e:
        assert str(e) and len(cli.one_line(e).splitlines()) == 1
        return
    assert cfg.vcpus >= 1 and cfg.duration > 0 and cfg.entries >= 1


@settings(max_examples=300, deadline=None)
@given(
    variant=st.sampled_from(["directmap", "locked", "lockless", "locked-nolock", "bogus"]),
    vcpus=st.integers(-2, 2000), duration=NUMBERS, warmup=NUMBERS, entries=st.one_of(st.none(), st.integers(-1, 70000)),
    hash_entries=st.integers(-1, 70), levels=st.integers(-1, 10), frames=st.integers(-1, 10000),
    working_set=st.one_of(st.none(), st.integers(-1, 10000)), tlb_entries=st.integers(-1, 300),
    tlb_ways=st.integers(-1, 17), nest=st.one_of(st.none(), st.integers(-1, 5000)),
)
def test_validation_raises_only_usage_errors(variant, vcpus, duration, warmup, entries, hash_entries, levels, frames,
                                             working_set, tlb_entries, tlb_ways, nest):
    cfg = RunConfig(variant=variant, vcpus=vcpus, duration=float(duration), warmup=float(warmup), entries=entries,
                    hash_entries=hash_entries, levels=levels, frames=frames, working_set=working_set,
                    tlb_entries=tlb_entries, tlb_ways=tlb_ways, nest=nest)
    try:
        ok = validate(cfg)
    except UsageError as e:
        assert str(e) and len(cli.one_line(e).splitlines()) == 1
        return
    assert ok.hash_entries & (ok.hash_entries - 1) == 0
    sets = ok.tlb_entries // ok.tlb_ways
    assert ok.tlb_entries % ok.tlb_ways == 0 and sets & (sets - 1) == 0 and 1 <= ok.working_set <= ok.frames
    if ok.variant.startswith("lockless"):
        assert ok.entries - ok.hash_entries >= ok.levels ** 2


def test_the_seeds_inverted_check_is_named():
    with pytest.raises(UsageError, match="inverted"):
        validate(RunConfig(variant="lockless", entries=16))
