"""Simulated interrupts (testbed/irq.py): at chosen arrival points against the models, and whole runs.

The compiled side is driven as the operation loop drives it: the variant's
``map_page`` / ``unmap_page`` with the interrupt context, an interrupt made
pending at a chosen arrival point (``vrow[V_IRQ_PENDING] = k``: the k-th point
from there), and the loop's own arrival points after the operation (what
``irq.loop_point`` does: ``kernels.irq_take`` while one is pending), which
deliver a deferred interrupt. The shipped loop with interrupts is compared with
the C port at chosen points in tests/test_native.py, and runs below. The model side is
tests/model.py, where an interrupt is a nested map and unmap
(``model.interrupt``). The handler's MFN comes from the interrupt generator's
draw over the working set; the arena here has one frame, so it is always MFN 0,
which collides with the sequences' MFNs in their buckets.
"""

from __future__ import annotations

import random

import pytest

from testbed import abi, irq, kernels, loops
from testbed import variants as registry
from testbed.config import RunConfig
from testbed.harness import run
from testbed.variants import dispatch

try:
    from model import Exhausted, interrupt
except ImportError:  # tests/ made a package
    from tests.model import Exhausted, interrupt

from test_model import DESIGNS, Compiled, Geom, compare_state, design, make_model, model_map, model_unmap

VA = abi.MAPCACHE_VA
HANDLER_MFN = 0
K = 8               # chosen arrival points: the k-th from the start of an operation, k in 1..K
# DESIGNS: every real design of the registry; where each runs: its tests/designs file's IRQ_GEOM


class Irq:
    """A Compiled variant with the interrupt context the operation loop passes."""

    def __init__(self, variant: str, g: Geom):
        self.c = Compiled(variant, g)
        self.w = self.c.views

    def ctx(self, v):
        return (self.w["frames"], self.w["expect"][v])

    def args(self, v):
        return self.c._args(v)

    def pend(self, v, k):
        self.w["vst"][v, abi.V_IRQ_PENDING] = k

    def stat(self, v, col):
        return int(self.w["stats"][v, col])

    def map(self, v, mfn):
        return int(kernels.map_page(v, mfn, *self.args(v), self.ctx(v)))

    def unmap(self, v, va):
        return int(kernels.unmap_page(v, va, *self.args(v), self.ctx(v)))

    def deliver(self, v):
        """The loop's arrival points after the operation, until nothing is pending."""
        for _ in range(irq.SPAN + 1):
            if self.w["vst"][v, abi.V_IRQ_PENDING] == 0:
                return
            kernels.irq_take(v, *self.args(v), self.w["frames"], self.w["expect"][v], 0)
        raise AssertionError("an interrupt stayed pending past SPAN loop points")


def _handler_on_model(model, v, ctx):
    try:
        interrupt(model, v, HANDLER_MFN)
        return abi.ST_OK
    except Exhausted:
        return abi.ST_EXHAUSTED


def run_irq_sequence(variant: str, seed: int, steps: int = 120) -> None:
    """Random nested maps and unmaps on 2 vCPUs, an interrupt at a chosen point before some of them."""
    g = design(variant).IRQ_GEOM
    rnd = random.Random(seed)
    c, model = Irq(variant, g), make_model(variant, g)
    # what the design declares (a control breaks it on purpose: the state comparison must catch that)
    irqs_off = () if registry.get(variant).control else registry.get(variant).module.IRQS_OFF
    live = {v: [] for v in range(g.vcpus)}
    for step in range(steps):
        v = rnd.randrange(g.vcpus)
        k = rnd.randrange(1, K + 1) if rnd.random() < 0.5 else 0
        ctx = f"{variant} seed {seed} step {step} vcpu {v} irq at point {k}: run_irq_sequence({variant!r}, {seed})"
        c.pend(v, k)
        inside0 = c.stat(v, abi.S_IRQ_INSIDE)
        taken0 = c.stat(v, abi.S_IRQ_TAKEN)
        if live[v] and (rnd.random() < 0.45 or len(live[v]) >= g.levels ** 2):
            slot, _mfn = live[v].pop()
            st = c.unmap(v, VA + slot)
            op = "unmap"
        else:
            mfn = rnd.randrange(1, 12)
            va = c.map(v, mfn)
            op = "map"
        inside = c.stat(v, abi.S_IRQ_INSIDE) > inside0
        if inside:
            assert op not in irqs_off, f"{ctx}: interrupt taken inside {op}, which the design runs with them off"
        c.deliver(v)
        if k:
            assert c.stat(v, abi.S_IRQ_TAKEN) == taken0 + 1, f"{ctx}: the interrupt was not taken exactly once"
        # the model: the handler nested where the design puts it (see tests/model.py, interrupt)
        handler_st = abi.ST_OK
        if k and inside and op == "unmap":
            handler_st = _handler_on_model(model, v, ctx)
        if op == "unmap":
            assert st == model_unmap(model, v, slot), f"{ctx}: unmap status"
        else:
            exp = model_map(model, v, mfn)
            got = ("ok", va - VA) if va >= 0 else ({abi.ST_EXHAUSTED: "exhausted"}.get(-va, f"status {-va}"), None)
            assert got == exp, f"{ctx}: map of {mfn}: model {exp}, compiled {got}"
            if va >= 0:
                live[v].append((va - VA, mfn))
        if k and not (inside and op == "unmap"):
            handler_st = _handler_on_model(model, v, ctx)
        assert c.w["vst"][v, abi.V_IRQ_STATUS] == handler_st, f"{ctx}: the handler's status"
        c.w["vst"][v, abi.V_IRQ_STATUS] = abi.ST_OK
        assert c.w["vst"][v, abi.V_IRQ_OFF] == 0, f"{ctx}: interrupts left disabled"
        assert c.stat(v, abi.S_STALE) == 0, f"{ctx}: the handler's access reached the wrong frame"
        compare_state(model, c.c, ctx)


@pytest.mark.parametrize("variant", DESIGNS)
def test_interrupts_at_chosen_points_match_the_model(variant):
    """Mutation: drop irq_save from lockless's map (or run lockless-noirqsave, below) and this fails."""
    for seed in range(3):
        run_irq_sequence(variant, seed)


def test_an_interrupt_inside_lockless_without_irqsave_breaks_the_model():
    """The negative control, at the point its essay names: the handler takes the slot being mapped."""
    with pytest.raises(AssertionError, match="differ|status|wrong frame"):
        for seed in range(6):
            run_irq_sequence("lockless-noirqsave", seed)


@pytest.mark.parametrize("variant", DESIGNS)
def test_irqs_off_declarations_match_the_code(variant):
    """IRQS_OFF says which operations run with interrupts off; the compiled points must agree.

    Mutation: declare kmap-local's IRQS_OFF = ("map", "unmap"), or drop irq_save from a
    design that declares it, and this fails.
    """
    g = design(variant).IRQ_GEOM
    off = registry.get(variant).module.IRQS_OFF
    for op in ("map", "unmap"):
        inside = deferred = 0
        for k in range(1, K + 1):
            c = Irq(variant, g)
            held = c.map(0, 5)
            if op == "map":
                c.pend(0, k)
                c.map(0, 6 + 4 * k)           # a miss: the slow path
            else:
                c.pend(0, k)
                c.unmap(0, held)
            inside += c.stat(0, abi.S_IRQ_INSIDE)
            deferred += c.stat(0, abi.S_IRQ_DEFERRED)
            c.deliver(0)
            assert c.stat(0, abi.S_IRQ_TAKEN) == 1
        if op in off:
            assert inside == 0 and deferred > 0, (variant, op, inside, deferred)
        elif not dispatch.takes_irq(registry.get(variant).module.__name__, f"{op}_page"):
            # a hook without the interrupt context has no arrival points: interrupts come between operations
            assert inside == 0 and deferred == 0, (variant, op, inside, deferred)
        else:
            assert inside > 0 and deferred == 0, (variant, op, inside, deferred)


def _run(variant, **kw):
    cfg = dict(variant=variant, vcpus=2, duration=1.0, warmup=0.0, seed=5, frames=256, irq_rate=20000)
    cfg.update(kw)
    return run(RunConfig(**cfg))


@pytest.mark.parametrize("variant,workload,extra", [
    ("lockless", "uniform", {}), ("lockless", "hot", {}), ("kmap-local", "ptwalk", {"entries": 17}),
    ("locked", "hot", {}), ("percpu", "ptwalk", {"entries": 17})])   # 16 slots, the ASI default: a walk plus a handler needs 17
def test_real_designs_take_interrupts_and_pass(variant, workload, extra, exclusive, no_leftovers):
    """Mutation: make the handler skip its unmap (kernels.irq_take) and slot_leaks/exhaustion fail this."""
    res = _run(variant, workload=workload, **extra)
    assert res["verdict"] == "SUCCESS", (res["checks"], res["failure"])
    i = res["irq"]
    assert i["taken"] > 0 and i["maps"] == i["taken"], i
    off = registry.get(variant).module.IRQS_OFF
    if off:
        assert i["inside"] == 0 and i["deferred"] > 0, i
    else:
        assert i["inside"] > 0 and i["deferred"] == 0, i
    assert res["totals"]["irq_taken"] == sum(d["irq_taken"] for d in res["per_vcpu"])


def test_lockless_leaks_when_a_handler_maps_a_frame_the_walk_holds(exclusive, no_leftovers):
    """A finding: the seed's known leak (README) is reached on a nested walk once handlers map too.

    The walk maps distinct frames, so alone it never meets the leak; a handler maps any frame,
    including one the walk holds after a colliding MFN evicted it from its bucket, and the
    walk's unmap of it then keeps its slot in use forever. Without interrupts the same run passes.
    """
    res = _run("lockless", workload="ptwalk", vcpus=1, duration=2.0)
    assert res["verdict"] == "FAILURE" and res["checks"]["slot_leaks"] > 0, (res["checks"], res["irq"])
    quiet = _run("lockless", workload="ptwalk", vcpus=1, duration=1.0, irq_rate=0.0)
    assert quiet["verdict"] == "SUCCESS", quiet["checks"]


def test_no_interrupts_without_the_option(exclusive, no_leftovers):
    res = _run("lockless", irq_rate=0.0)
    assert res["irq"] is None and res["totals"]["irq_taken"] == 0 and res["totals"]["irq_deferred"] == 0


def test_the_loop_without_interrupts_is_the_one_without_their_code():
    """--irq-rate 0 runs a loop compiled with no interrupt code (the context's type is None), and any
    other rate the interrupt loop; the two are separate compiled functions of the same design."""
    from testbed import config

    for rate, on in ((0.0, False), (1000.0, True)):
        cfg = config.validate(RunConfig(variant="lockless", irq_rate=rate))
        p = config.params(cfg)
        loop = loops.loop(p)
        assert (loop in loops._LOOPS.LOOPS_IRQ) == on and (loop in loops._LOOPS.LOOPS) != on
    p[abi.P_IRQ_INTERVAL] = irq.NO_TIMER
    assert loops.loop(p) in loops._LOOPS.LOOPS_IRQ


def test_kmap_local_16_slots_exhaust_under_interrupts_on_a_full_walk(exclusive, no_leftovers):
    """The handler's slot counts: 16 slots hold the 16-deep walk, not the walk and an interrupt."""
    for seed in (1, 2, 3):
        res = _run("kmap-local", workload="ptwalk", unchecked=True, vcpus=1, duration=2.0, seed=seed,
                   irq_rate=50000)
        if res["checks"]["exhaustion"] > 0:
            assert res["verdict"] == "FAILURE"
            return
    pytest.fail(f"no exhaustion with 16 slots and interrupts: {res['checks']} {res['irq']}")


def test_lockless_noirqsave_is_caught_only_with_interrupts(exclusive, no_leftovers):
    """The control's fault is the missing local_irq_save and nothing else: without interrupts it is
    the real design and passes; with them the checks its registry line names catch it."""
    quiet = _run("lockless-noirqsave", irq_rate=0.0)
    assert quiet["verdict"] == "SUCCESS", quiet["checks"]
    for seed in (5, 6, 7):
        res = _run("lockless-noirqsave", seed=seed, duration=2.0, irq_rate=10000)
        caught = [k for k in registry.get("lockless-noirqsave").catches if res["checks"][k] > 0]
        if res["verdict"] == "FAILURE" and caught:
            return
    pytest.fail(f"lockless-noirqsave not caught: {res['checks']} {res['irq']}")
