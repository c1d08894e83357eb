"""The compiled variants against the plain-Python reference models (tests/designs/).

Every test drives the compiled ``map_page`` / ``unmap_page`` of one variant
directly from Python, one operation at a time (1 to 3 vCPUs interleaved
sequentially in this one process), runs the same operation on the model, and
after every step compares: the slot returned (or the error), every PTE, every
hash entry, the inuse (and garbage) bitmaps, cursor, epoch and the TLB clock
words (locked), refcounts (lockless), the counters both keep, and the variant's
own ``check``. Each mapping is also accessed through the vCPU's simulated TLB,
which must reach the frame mapped.

Every assertion message names the seed, the geometry, the step and a repro
call: ``run_sequence(variant, geometry, seed, steps)``.

Nothing here names a design but the hand-traced sequences at the end: the
model, the state readers, the corruptions and the geometries of each design are
its file ``tests/designs/<module>.py``, and every test over designs is
parametrised by the registry (``variants.REAL``, the controls), so a design
added to the registry runs here with no edit (tests/test_variants.py fails when
its file is missing).
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from testbed import abi, harness, kernels, tlb
from testbed import config as cfgmod
from testbed.config import RunConfig
from testbed import variants as registry
from testbed.variants import locked

try:
    from designs import Geom, adapter, keeps_model_state, skipped
    from model import BadUnmap, Exhausted, OrderError, RefcountError
except ImportError:  # tests/ made a package
    from tests.designs import Geom, adapter, keeps_model_state, skipped
    from tests.model import BadUnmap, Exhausted, OrderError, RefcountError

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

VA = abi.MAPCACHE_VA
PRESENT = int(tlb.PTE_PRESENT)
MAX_NEST = 16
DESIGNS = [v.name for v in registry.REAL]
ADAPTERS = {m: adapter(m) for m in registry.MODULES}
# tests/test_shipped_loop.py's: each registry module's model class, and its state readers by model class
MODELS = {m: a.Model for m, a in ADAPTERS.items()}
STATES = {a.Model: (a.model_state, a.compiled_state) for a in ADAPTERS.values()}


def design(variant: str):
    """The test side of a variant (or a control): its module's file in tests/designs."""
    return ADAPTERS[registry.get(variant).module]


def make_model(variant: str, g: Geom):
    return design(variant).Model(g.vcpus, g.entries, g.hash)


class Compiled:
    """One compiled variant's state, private to this process, and one TLB per vCPU."""

    def __init__(self, variant: str, g: Geom):
        self.variant = variant
        self.mod = registry.get(variant).module
        self.cfg = cfgmod.validate(RunConfig(
            variant=variant, vcpus=g.vcpus, entries=g.entries, hash_entries=g.hash, levels=g.levels,
            unchecked=g.unchecked, frames=1, tlb_entries=g.tlb_entries, tlb_ways=g.tlb_ways,
            cost_flush_one=0, cost_flush_all=0, cost_walk=0,
        ))
        self.p = cfgmod.params(self.cfg)
        self.layout = harness.build_layout(self.cfg)
        self.buf = bytearray(self.layout.size)
        self.views = self.layout.views(self.buf)
        harness.init_state(self.views, self.cfg)
        sets, ways = int(self.p[abi.P_TLB_SETS]), int(self.p[abi.P_TLB_WAYS])
        self.tlbs = [tlb.make_tlb(sets, ways) for _ in range(g.vcpus)]

    def _args(self, v):
        w = self.views
        return (self.p, w["dom"], w["pte"], w["dbits"], w["vst"][v], w["stats"][v], self.tlbs[v])

    def map(self, v: int, mfn: int) -> int:
        return int(kernels.map_page(v, mfn, *self._args(v)))

    def unmap(self, v: int, va: int) -> int:
        return int(kernels.unmap_page(v, va, *self._args(v)))

    def translate(self, v: int, slot: int) -> int:
        return int(tlb.translate(self.tlbs[v], self.p, self.views["pte"], slot, self.views["stats"][v]))

    def clone_views(self) -> dict:
        return self.layout.views(bytearray(self.buf))

    def check(self, live: dict, views: dict | None = None) -> dict:
        return self.mod.check(self.views if views is None else views, self.cfg, to_va(live))


def to_va(live: dict) -> dict:
    return {v: [(VA + slot, mfn) for slot, mfn in maps] for v, maps in live.items()}


def model_map(model, v, mfn):
    try:
        return ("ok", model.map(v, mfn))
    except Exhausted:
        return ("exhausted", None)
    except RefcountError:
        return ("refcount", None)


def compiled_map(c: Compiled, v, mfn):
    va = c.map(v, mfn)
    if va >= 0:
        return ("ok", va - VA)
    return ({abi.ST_EXHAUSTED: "exhausted", abi.ST_REFCOUNT: "refcount"}.get(-va, f"status {-va}"), None)


def model_unmap(model, v, slot):
    try:
        model.unmap(v, slot)
        return abi.ST_OK
    except RefcountError:
        return abi.ST_REFCOUNT
    except BadUnmap:
        return abi.ST_BAD_VA
    except OrderError:
        return abi.ST_ORDER


# --------------------------------------------------------------------------------------
# state, as plain values, from each side
# --------------------------------------------------------------------------------------


def _short_diff(a, b):
    """Where two (nested) lists differ: the first few differing positions."""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                out.append(f"[{i}] model={x!r} compiled={y!r}")
                if len(out) == 4:
                    out.append("...")
                    break
        return "; ".join(out)
    return f"model={a!r} compiled={b!r}"


def compare_state(model, c: Compiled, ctx: str) -> None:
    a = design(c.variant)
    exp, got = a.model_state(model), a.compiled_state(c)
    skip = skipped(registry.get(c.variant))     # what a negative control does differently on purpose
    diffs = [f"  {k}: {_short_diff(exp[k], got[k])}" for k in exp if k not in skip and exp[k] != got[k]]
    assert not diffs, f"{ctx}: model and compiled state differ:\n" + "\n".join(diffs)


# --------------------------------------------------------------------------------------
# corrupting a copy of the state: check() must notice
# --------------------------------------------------------------------------------------


def check_corruptions(variant, model, c, live, rng, ctx):
    base = c.check(live)
    for what, mutate, metric in design(variant).corruptions(model, c, live, rng):
        views = c.clone_views()
        mutate(views)
        got = c.mod.check(views, c.cfg, to_va(live))
        assert got[metric] > base[metric], (
            f"{ctx}: check() missed a corruption ({what}): {metric} {got[metric]} after, {base[metric]} before"
        )
    # the original state is untouched by the clones
    assert c.check(live) == base, f"{ctx}: check() result changed after checking clones"


# --------------------------------------------------------------------------------------
# the seeded sequence runner
# --------------------------------------------------------------------------------------


def repro(variant, g, seed, steps, runner="run_sequence"):
    length = "rounds" if runner == "run_fill" else "steps"
    return f"{runner}({variant!r}, {g}, seed={seed}, {length}={steps})"


class Pair:
    """The model and the compiled variant driven in lockstep, compared after every step."""

    def __init__(self, variant: str, g: Geom, seed: int, steps: int, runner: str = "run_sequence",
                 tlb_strict: bool = True):
        self.variant, self.g, self.seed = variant, g, seed
        self.model = make_model(variant, g)
        self.c = Compiled(variant, g)
        self.live = {v: [] for v in range(g.vcpus)}       # per vCPU: (slot, mfn) in map order
        self.trace = deque(maxlen=10)
        self.head = f"seed={seed} variant={variant} {g}"
        self.repro = repro(variant, g, seed, steps, runner)
        self.tlb_strict = tlb_strict
        self.ctx = self.head
        self.summary = dict(steps=0, maps=0, unmaps=0, exhausted=0, refcount=0, max_live=0, max_slot=-1,
                            stale=0, leaks_max=0)

    def _ctx(self, op):
        self.trace.append(op)
        self.ctx = f"{self.head} {op}\n  recent: {list(self.trace)}\n  reproduce: {self.repro}"
        return self.ctx

    def map(self, v: int, mfn: int, label: str = "") -> tuple:
        ctx = self._ctx(f"{label}vcpu {v} map mfn {mfn} (live {len(self.live[v])})")
        exp = model_map(self.model, v, mfn)
        got = compiled_map(self.c, v, mfn)
        assert got == exp, f"{ctx}: map result model={exp} compiled={got}"
        s = self.summary
        s["maps"] += 1
        if exp[0] == "ok":
            self.live[v].append((exp[1], mfn))
            local = exp[1] - v * self.g.entries if design(self.variant).PER_VCPU else exp[1]
            s["max_slot"] = max(s["max_slot"], local)
        elif exp[0] == "exhausted":
            s["exhausted"] += 1
        else:
            s["refcount"] += 1
        return exp

    def unmap(self, v: int, k: int, label: str = "") -> None:
        slot, mfn = self.live[v].pop(k)
        ctx = self._ctx(f"{label}vcpu {v} unmap slot {slot} (mfn {mfn})")
        exp = model_unmap(self.model, v, slot)
        got = self.c.unmap(v, VA + slot)
        assert exp == abi.ST_OK, f"{ctx}: the model refused a legal unmap: status {exp}"
        assert got == exp, f"{ctx}: unmap status model={exp} compiled={got}"
        self.summary["unmaps"] += 1

    def verify(self, v: int, corrupt_rng: random.Random | None = None) -> None:
        """Compare everything after a step of vCPU ``v``."""
        model, c, live, ctx, s = self.model, self.c, self.live, self.ctx, self.summary
        s["steps"] += 1
        s["max_live"] = max(s["max_live"], len(live[v]))
        compare_state(model, c, ctx)
        # every live mapping of this vCPU reaches its frame through the vCPU's TLB
        for slot, mfn in live[v]:
            if slot < 0:
                continue                  # a direct-map address: no TLB entry of the mapcache's
            pfn = c.translate(v, slot)
            if pfn != mfn:
                s["stale"] += 1
                assert not self.tlb_strict, f"{ctx}: slot {slot} mapped to mfn {mfn} translates to {pfn} (stale TLB)"
        leaks = model.leaks(live)
        s["leaks_max"] = max(s["leaks_max"], leaks)
        if not design(self.variant).MAY_LEAK:
            assert leaks == 0, f"{ctx}: the {self.variant} model leaks {leaks} slots (model bug or design flaw)"
        res = c.check(live)
        assert res == {"slot_leaks": leaks, "invariant_violations": 0}, (
            f"{ctx}: check() = {res}, model expects slot_leaks={leaks}, invariant_violations=0"
        )
        if corrupt_rng is not None:
            check_corruptions(self.variant, model, c, live, corrupt_rng, ctx)

    def drain(self) -> None:
        """Unmap everything (LIFO per vCPU), comparing after each."""
        for v in range(self.g.vcpus):
            while self.live[v]:
                self.unmap(v, len(self.live[v]) - 1, "drain: ")
                self.verify(v)

    def finish(self) -> dict:
        self.summary.update(design(self.variant).summary(self.model))
        return self.summary


def run_sequence(variant: str, g: Geom, seed: int, steps: int, *, corrupt_every: int = 0,
                 tlb_strict: bool = True) -> dict:
    """One seeded sequence of maps and unmaps on the model and the compiled variant.

    Nested maps up to 16 live per vCPU, unmaps in LIFO or random order, MFNs
    drawn to collide in one bucket, to repeat, or at random; vCPUs interleaved
    with runs of one vCPU. Returns a summary of what it exercised.
    """
    rng = random.Random(seed)
    pair = Pair(variant, g, seed, steps, tlb_strict=tlb_strict)
    V, H = g.vcpus, g.hash
    live = pair.live

    # the sequence's character (a stack design is only ever released in LIFO order)
    order = rng.choice(["lifo", "random", "mixed"])
    if design(variant).LIFO:
        order = "lifo"
    max_nest = [rng.choice([1, 2, 4, 8, MAX_NEST, MAX_NEST, rng.randint(1, MAX_NEST)]) for _ in range(V)]
    c0 = rng.randrange(H)
    collide = [c0 + H * k for k in range(rng.randint(2, 6))]      # all in one bucket
    w_repeat, w_collide, w_small = rng.choice([(0.3, 0.4, 0.2), (0.1, 0.6, 0.2), (0.2, 0.2, 0.5), (0.05, 0.1, 0.3)])
    stick = rng.choice([0.0, 0.5, 0.8])
    recent = deque(maxlen=6)
    p_map, phase_left, v = 0.7, 0, 0

    for step in range(steps):
        if phase_left == 0:
            p_map, phase_left = rng.choice([0.85, 0.7, 0.5, 0.25]), rng.randint(4, 30)
        phase_left -= 1
        if rng.random() >= stick:
            v = rng.randrange(V)
        held = live[v]
        if held and (len(held) >= max_nest[v] or rng.random() >= p_map):
            k = (len(held) - 1 if order == "lifo" or (order == "mixed" and rng.random() < 0.5)
                 else rng.randrange(len(held)))
            pair.unmap(v, k, f"step {step}: ")
        else:
            r = rng.random()
            if recent and r < w_repeat:
                mfn = rng.choice(recent)
            elif r < w_repeat + w_collide:
                mfn = rng.choice(collide)
            elif r < w_repeat + w_collide + w_small:
                mfn = rng.randrange(2 * H)
            else:
                mfn = rng.randrange(1 << rng.choice([12, 40]))
            recent.append(mfn)
            pair.map(v, mfn, f"step {step}: ")
        corrupt = corrupt_every and (step % corrupt_every == corrupt_every - 1 or step == steps - 1)
        pair.verify(v, rng if corrupt else None)
        if pair.summary["refcount"]:
            break
    pair.drain()
    return pair.finish()


def run_fill(variant: str, g: Geom, seed: int, rounds: int = 3) -> dict:
    """Hold distinct MFNs on one vCPU until the cache is exhausted, release a random part, repeat.

    Crosses every bitmap word (wide geometries never fill under the nested
    sequences), with everything compared after every step.
    """
    rng = random.Random(seed)
    pair = Pair(variant, g, seed, rounds, runner="run_fill")
    v = rng.randrange(g.vcpus)
    span = 4 * (g.vcpus * g.entries + g.hash)
    for r in range(rounds):
        mfns = rng.sample(range(span), span)
        for n, mfn in enumerate(mfns):
            if any(m == mfn for _, m in pair.live[v]):
                continue
            res = pair.map(v, mfn, f"round {r} fill {n}: ")
            pair.verify(v)
            if res[0] != "ok":
                break
        assert pair.summary["exhausted"] == r + 1, f"{pair.ctx}: round {r} never exhausted the cache"
        lifo = design(variant).LIFO
        for _ in range(rng.randint(1, len(pair.live[v]))):
            k = len(pair.live[v]) - 1 if lifo else rng.randrange(len(pair.live[v]))
            pair.unmap(v, k, f"round {r} release: ")
            pair.verify(v)
    pair.verify(v, random.Random(seed))
    pair.drain()
    return pair.finish()


def _total(summaries):
    out = {}
    for s in summaries:
        for k, x in s.items():
            out[k] = out.get(k, 0) + x
    return out


# --------------------------------------------------------------------------------------
# randomised comparisons over geometries
# --------------------------------------------------------------------------------------

SEEDS = 8
STEPS = 300


def _covers(tot, events, what):
    missing = [e for e in events if tot.get(e, 0) <= 0]
    assert not missing, f"{what}: never exercised {missing}; totals {tot}"


# (design, geometry, what the seeds together must exercise there): tests/designs/<module>.py GEOMS
SEQUENCES = [(name, g, events) for name in DESIGNS for g, events in design(name).GEOMS]
FILL = [(name, g) for name in DESIGNS for g in design(name).FILL]
STALE = [v.name for v in registry.CONTROLS if keeps_model_state(v)]


@pytest.mark.parametrize("variant,g,events", SEQUENCES, ids=[f"{v}-{g}" for v, g, _ in SEQUENCES])
def test_design_matches_model(variant, g, events):
    tot = _total(run_sequence(variant, g, seed, STEPS, corrupt_every=60) for seed in range(SEEDS))
    _covers(tot, events, f"seeds 0..{SEEDS - 1} {variant} {g}")
    design(variant).check_totals(tot)


def test_every_design_has_sequences():
    """A design whose file lists no geometry would be compared nowhere."""
    assert {v for v, _, _ in SEQUENCES} == set(DESIGNS)


@pytest.mark.parametrize("variant,g", FILL, ids=[f"{v}-{g}" for v, g in FILL])
def test_fill_to_exhaustion_matches_model(variant, g):
    for seed in range(2):
        s = run_fill(variant, g, seed)
        per_vcpu = g.entries if design(variant).PER_VCPU else g.vcpus * g.entries
        assert s["max_slot"] == per_vcpu - 1, f"seed={seed} {variant} {g}: highest slot used {s['max_slot']}"


def test_the_stale_controls_are_the_flushless_ones():
    """The controls the TLB oracle runs below (each design's control that only skips a flush, by its
    design's SKIP): there are some, and each is one the registry says stale translations catch."""
    assert STALE and all("stale_translations" in registry.get(v).catches for v in STALE), STALE


@pytest.mark.parametrize("variant", STALE)
def test_tlb_oracle_catches_missing_flush(variant):
    """The negative controls keep the same state as the model, but a TLB goes stale."""
    g = design(variant).STALE_GEOM
    stale = 0
    seeds = []
    for seed in range(12):
        s = run_sequence(variant, g, seed, STEPS, tlb_strict=False)
        stale += s["stale"]
        seeds.append(seed)
        if stale:
            break
    assert stale > 0, f"seeds {seeds} {variant} {g}: the TLB oracle found no stale translation"


if given is not None:

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(
        variant=st.sampled_from([v for v in DESIGNS if not registry.get(v).baseline]),
        vcpus=st.integers(1, 3),
        entries=st.integers(1, 6),
        hash_log=st.integers(0, 3),
        seed=st.integers(0, 2**32 - 1),
    )
    def test_random_geometry_matches_model(variant, vcpus, entries, hash_log, seed):
        g = Geom(vcpus, entries, 1 << hash_log, levels=1, unchecked=True)
        run_sequence(variant, g, seed, 150)


# --------------------------------------------------------------------------------------
# hand-traced sequences: both the model and the compiled code against the designs (docs/variants.md)
# --------------------------------------------------------------------------------------


def _run_script(variant, g, script, expect, seed_note):
    """script: ("map", vcpu, mfn) / ("unmap", vcpu, slot); expect: slot, "exhausted" or None per op."""
    model, c = make_model(variant, g), Compiled(variant, g)
    for n, (op, v, x) in enumerate(script):
        ctx = f"{seed_note} {variant} {g} op {n} {op}({v}, {x})"
        if op == "map":
            m, k = model_map(model, v, x), compiled_map(c, v, x)
            want = ("ok", expect[n]) if isinstance(expect[n], int) else (expect[n], None)
            assert m == want, f"{ctx}: model {m}, hand trace {want}"
            assert k == want, f"{ctx}: compiled {k}, hand trace {want}"
        else:
            assert model_unmap(model, v, x) == abi.ST_OK, ctx
            assert c.unmap(v, VA + x) == abi.ST_OK, ctx
        compare_state(model, c, ctx)
    return model, c


def test_locked_hand_trace():
    g = Geom(1, 4, 2)
    script = [("map", 0, 0), ("unmap", 0, 0), ("map", 0, 2), ("unmap", 0, 1), ("map", 0, 4), ("map", 0, 6),
              ("map", 0, 8), ("map", 0, 10), ("map", 0, 12)]
    # map 8: cursor at the end, harvest frees slot 0 (garbage when bucket 0 moved to slot 1)
    # map 10: nothing left, evict bucket 0's idle slot 1; map 12: nothing to evict, BUG
    expect = [0, None, 1, None, 2, 3, 0, 1, "exhausted"]
    model, c = _run_script("locked", g, script, expect, "seed=none(hand trace)")
    got = (model.epoch, model.cursor, model.wraps[0], model.harvests[0], model.evictions[0], model.flush_all)
    assert got == (2, 2, 3, 1, 1, [2]), f"seed=none(hand trace): epoch, cursor, wraps, harvests, evictions, flushes {got}"


def test_lockless_hand_trace():
    g = Geom(1, 4, 2)
    script = [("map", 0, 0), ("map", 0, 2), ("unmap", 0, 0), ("map", 0, 4), ("unmap", 0, 1), ("map", 0, 4),
              ("map", 0, 1), ("map", 0, 3), ("map", 0, 5), ("map", 0, 7)]
    expect = [0, 1, None, 0, None, 0, 1, 2, 3, "exhausted"]
    model, _ = _run_script("lockless", g, script, expect, "seed=none(hand trace)")
    got = (model.refcnt[0], model.flush_one)
    assert got == ([2, 1, 1, 1], [6]), f"seed=none(hand trace): refcounts, invlpg count {got}"


def test_lockless_leak_sequence():
    """The seed's flaw: a slot whose MFN the bucket caches elsewhere is never freed."""
    g = Geom(1, 4, 2)
    script = [("map", 0, 0), ("map", 0, 2), ("map", 0, 0), ("unmap", 0, 0), ("unmap", 0, 1), ("unmap", 0, 2)]
    model, c = _run_script("lockless", g, script, [0, 1, 2, None, None, None], "seed=none(hand trace)")
    note = "seed=none(hand trace)"
    assert model.leaks({0: []}) == 1 and model.inuse[0] == [True, False, True, False], f"{note}: {model.inuse[0]}"
    res = c.check({0: []})
    assert res == {"slot_leaks": 1, "invariant_violations": 0}, f"{note}: check() = {res}"


def test_lockless_refcount_wraps_at_256th_map():
    seed_note = "seed=none(256 nested maps of mfn 5)"
    g = Geom(1, 32, 8, levels=4)
    model, c = make_model("lockless", g), Compiled("lockless", g)
    live = {0: []}
    for n in range(1, 257):
        m, k = model_map(model, 0, 5), compiled_map(c, 0, 5)
        want = ("refcount", None) if n == 256 else ("ok", 0)
        assert m == want, f"{seed_note} map #{n}: model {m}, want {want}"
        assert k == want, f"{seed_note} map #{n}: compiled {k}, want {want}"
        if m[0] == "ok":
            live[0].append((0, 5))
        compare_state(model, c, f"{seed_note} map #{n}")
    assert model.refcnt[0][0] == 0 and model.refcount_errors == [1], f"{seed_note}: {model.refcnt[0][0]}"
    res = c.check(live)
    assert res["invariant_violations"] > 0, f"{seed_note}: check() misses the wrapped refcount: {res}"
    # Past the error (a non-debug build goes on): the idle-looking slot is evicted and reused
    # while 255 mappings of mfn 5 still point at it.
    for mfn, slot in ((13, 1), (21, 0)):
        m, k = model_map(model, 0, mfn), compiled_map(c, 0, mfn)
        assert m == k == ("ok", slot), f"{seed_note} then map {mfn}: model {m}, compiled {k}, want slot {slot}"
        compare_state(model, c, f"{seed_note} then map {mfn}")
    assert model.pte[0] == 21, f"{seed_note}: slot 0 maps {model.pte[0]}"


def test_locked_refcount_does_not_error_at_256():
    seed_note = "seed=none(300 nested maps of mfn 5)"
    g = Geom(1, 16, 8)
    model, c = make_model("locked", g), Compiled("locked", g)
    # the first map takes a slot, its unmap caches it: from then on every map hits the hash
    for op in ("map", "unmap"):
        if op == "map":
            assert model_map(model, 0, 5) == compiled_map(c, 0, 5) == ("ok", 0), seed_note
        else:
            assert model_unmap(model, 0, 0) == c.unmap(0, VA) == abi.ST_OK, seed_note
    live = {0: []}
    for n in range(1, 301):
        m, k = model_map(model, 0, 5), compiled_map(c, 0, 5)
        assert m == k == ("ok", 0), f"{seed_note} map #{n}: model {m}, compiled {k}"
        live[0].append((0, 5))
        compare_state(model, c, f"{seed_note} map #{n}")
    assert model.hash[0][5].refcnt == 300, f"{seed_note}: {model.hash[0][5]}"
    assert c.check(live) == {"slot_leaks": 0, "invariant_violations": 0}, seed_note
    while live[0]:
        live[0].pop()
        assert model_unmap(model, 0, 0) == c.unmap(0, VA) == abi.ST_OK, seed_note
        compare_state(model, c, f"{seed_note} unmap, {len(live[0])} left")
    assert c.check(live) == {"slot_leaks": 0, "invariant_violations": 0}, seed_note


def test_locked_refcount_wraps_at_2_pow_32():
    """The 32-bit count: both report the wrap at the same map (the stored value may differ)."""
    seed_note = "seed=none(refcount preset to 2**32-1)"
    g = Geom(1, 4, 2)
    model, c = make_model("locked", g), Compiled("locked", g)
    assert model_map(model, 0, 3) == compiled_map(c, 0, 3) == ("ok", 0), seed_note
    assert model_unmap(model, 0, 0) == c.unmap(0, VA) == abi.ST_OK, seed_note
    model.hash[0][1].refcnt = 2**32 - 1
    c.views["vst"][0, locked.V_HASH + 2 * 2 + 1] = 2**32 - 1
    assert model_map(model, 0, 3) == compiled_map(c, 0, 3) == ("refcount", None), seed_note


def test_illegal_unmaps_are_refused_alike():
    """Unmaps the harness never issues: both sides refuse them with the same status."""
    note = "seed=none(illegal unmaps)"
    for variant, g, script in (
        # locked: a slot never mapped; a slot gone to garbage; a cached slot with refcount 0
        ("locked", Geom(2, 4, 2), [("unmap", 0, 3), ("map", 0, 0), ("map", 0, 2), ("unmap", 0, 0),
                                   ("unmap", 0, 1), ("unmap", 0, 0), ("unmap", 0, 1)]),
        # lockless: a slot never mapped; another vCPU's slot; a slot already released
        ("lockless", Geom(2, 4, 2), [("unmap", 0, 3), ("map", 1, 0), ("unmap", 0, 4), ("unmap", 1, 4),
                                     ("unmap", 1, 4)]),
    ):
        model, c = make_model(variant, g), Compiled(variant, g)
        statuses = []
        for n, (op, v, x) in enumerate(script):
            ctx = f"{note} {variant} {g} op {n} {op}({v}, {x})"
            if op == "map":
                assert model_map(model, v, x) == compiled_map(c, v, x), ctx
            else:
                m, k = model_unmap(model, v, x), c.unmap(v, VA + x)
                assert m == k, f"{ctx}: model status {m}, compiled status {k}"
                statuses.append(m)
            compare_state(model, c, ctx)
        want = ([abi.ST_BAD_VA, abi.ST_OK, abi.ST_OK, abi.ST_BAD_VA, abi.ST_REFCOUNT] if variant == "locked"
                else [abi.ST_REFCOUNT, abi.ST_BAD_VA, abi.ST_OK, abi.ST_REFCOUNT])
        assert statuses == want, f"{note} {variant}: statuses {statuses}, want {want}"


def test_percpu_hand_trace():
    """One vCPU, 4 slots, 2 buckets: garbage waits for the wrap, one flush per wrap, never an invlpg."""
    g = Geom(1, 4, 2)
    script = [("map", 0, 0), ("unmap", 0, 0), ("map", 0, 2), ("unmap", 0, 1), ("map", 0, 4), ("map", 0, 6),
              ("map", 0, 8), ("map", 0, 10), ("map", 0, 12)]
    # unmap 0 caches slot 0 in bucket 0; unmap 1 moves bucket 0 to slot 1, slot 0 to garbage.
    # map 4, 6 take slots 2, 3; map 8 wraps: slot 0 reclaimed (flush 1); map 10 wraps, nothing to
    # reclaim, evicts bucket 0's idle slot 1 (flush 2); map 12: nothing left.
    expect = [0, None, 1, None, 2, 3, 0, 1, "exhausted"]
    model, c = _run_script("percpu", g, script, expect, "seed=none(hand trace)")
    got = (model.cursor, model.wraps, model.harvests, model.evictions, model.flush_all)
    assert got == ([2], [3], [1], [1], [2]), f"seed=none(hand trace): cursor, wraps, harvests, evictions, flushes {got}"
    assert int(c.views["stats"][0, abi.S_FLUSH_ONE]) == 0


def test_kmap_local_hand_trace_and_order():
    """Push, pop with one invlpg each; an out-of-order unmap is refused alike and changes nothing."""
    g = Geom(2, 2, 1)
    script = [("map", 0, 7), ("map", 0, 9), ("map", 1, 7), ("unmap", 0, 1), ("map", 0, 5), ("map", 0, 6)]
    expect = [0, 1, 2, None, 1, "exhausted"]
    model, c = _run_script("kmap-local", g, script, expect, "seed=none(hand trace)")
    assert model.flush_one == [1, 0] and [len(s) for s in model.stack] == [2, 1]
    note = "seed=none(unmap below the top)"
    assert model_unmap(model, 0, 0) == c.unmap(0, VA + 0) == abi.ST_ORDER, note
    assert model_unmap(model, 0, 3) == c.unmap(0, VA + 3) == abi.ST_BAD_VA, note    # vCPU 1's slot
    compare_state(model, c, note)
    assert c.check({0: [(0, 7), (1, 5)], 1: [(2, 7)]}) == {"slot_leaks": 0, "invariant_violations": 0}, note
