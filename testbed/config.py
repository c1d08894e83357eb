"""One frozen configuration per run, validated before anything starts (docs/variants.md, conventions 6).

The command line becomes a ``RunConfig``; ``validate`` turns every bad value
into a one-line ``UsageError`` that names the problem and the fix; ``params``
turns the config into the int64 array the kernels read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import abi, irq, tlb
from . import variants as registry
from .errors import UsageError, did_you_mean
from .topology import check_placement
from .variants.contract import domain_vcpus  # noqa: F401  (config.domain_vcpus: the one rule)
from .timing import tsc_hz

WORKLOADS = {
    "uniform": (abi.WL_UNIFORM, "map / access / unmap one MFN drawn uniformly from the working set"),
    "hot": (abi.WL_HOT, "9 maps in 10 from a small hot set (--hot-set), so most hit the per-vCPU hash"),
    "ptwalk": (abi.WL_PTWALK, "nested walks holding 1..--nest distinct frames at once (PAGING_LEVELS**2 by default)"),
    "guest": (abi.WL_GUEST, "the Geekbench analogue: guest work (--guest-work units), then a hypercall of "
              "--burst map / access / unmap operations; ops/s is guest work done per second"),
    "nest-same": (abi.WL_NEST_SAME, "nested walks mapping one MFN --nest times (default levels**2 - levels), "
                  "then --levels distinct other frames under it, all held: with --nest 256, the seed's 8-bit "
                  "refcount wraps"),
    "timers": (abi.WL_TIMERS, "guest work, then take a deadline (now + --slack-us), a hypercall burst, and arm a "
               "single-shot timer: -ETIME if the deadline passed, retried at once; --panic-streak in a row panic"),
}

MAX_VCPUS = 1024
# Xen's MAX_VIRT_CPUS (xen/arch/x86/include/asm/config.h: GDT_LDT_MBYTES << (20 - GDT_LDT_VCPU_VA_SHIFT),
# 1024 << 3): the most vCPUs a domain can be given.
MAX_DOMAIN_VCPUS = 8192

# Timers, as FreeBSD 10.4's sys/dev/xen/timer/timer.c counts them (read at freebsd/freebsd-src
# 064bee341e, the code releng/10.4 ships): xentimer_et_start is asked for at least et_min_period,
# XENTIMER_MIN_PERIOD_IN_NSEC = 100 us ("Xen timers may fire up to 100us off"), and its retry loop
# is `do { if (++i == 60) panic(...); ...; error = set_singleshot_timer(...); } while (error == -ETIME)`:
# the 60th try panics before it is made, so 59 -ETIME in a row panic.
SLACK_US = 100.0
PANIC_STREAK = 59
# Xen's answer to VCPU_SSHOTTMR_future when the deadline has passed (xen/common/domain.c,
# VCPUOP_set_singleshot_timer): -ETIME up to Xen 4.17; ignored from Xen 4.18 on (commit
# 19c6cbd909, "xen/vcpu: ignore VCPU_SSHOTTMR_future"), the timer then fires at once.
SSHOT_FUTURE = {"honoured": "Xen 4.17 and older: -ETIME when the deadline has passed",
                "ignored": "Xen 4.18 and later (commit 19c6cbd909): the flag is ignored, the timer fires at once"}

# Scheduling models for more vCPUs than CPUs (--sched); see workers/sched.py and the README.
SCHED_MODELS = {
    "hypervisor": "the testbed schedules vCPUs as a hypervisor does: at most one per CPU, switched only "
                  "between operations when its time slice is up (never inside map/unmap or holding a lock)",
    "host": "the host's scheduler preempts vCPU processes anywhere, inside critical sections too: "
            "lock-holder preemption, as with a guest's own spinlocks",
}
# Xen credit2's default rate limit (sched_ratelimit_us): the least a vCPU runs before it can
# be preempted, and the slice that equal-weight vCPUs contending for a pCPU end up with.
TIMESLICE_US = 1000.0
# Xen's bounds on scheduler time values: rate limit >= 100 us, credit1 time slice <= 1000 ms.
TIMESLICE_MIN_US, TIMESLICE_MAX_US = 100.0, 1_000_000.0


def option(default, help: str, slot: int | None = None, flag: str | None = None, metavar: str | None = None,
           cli: bool = True, unit: str | None = None):
    """A run option, declared once: its default, its help, the ``abi`` slot that carries it raw
    into the kernels' parameter array (``params``), and its command-line flag (``--name-with-dashes``
    unless ``flag`` says otherwise; ``cli=False``: set by the commands themselves).

    ``options.add_run_options`` builds the command-line options from these declarations and
    ``options.config_from`` the config, so a new option is one line here plus its use. ``unit`` (s, ms, us): a time,
    given on the command line as a number in that unit or with its own (``10s``, ``500ms``).
    """
    return dataclasses.field(default=default, metadata={"help": help, "slot": slot, "flag": flag,
                                                        "metavar": metavar, "cli": cli, "unit": unit})


@dataclass(frozen=True)
class RunConfig:
    variant: str = option(registry.BASELINE, "mapcache design (see 'testbed variants')", cli=False)
    vcpus: int = option(2, "vCPU processes, or 'all' physical cores", slot=abi.P_VCPUS, cli=False)
    domain_vcpus: int | None = option(
        None, "vCPUs of the domain (Xen's max_vcpus): every design's state and locked's pool are sized for them; "
        "the first --vcpus run the workload, the others are blocked idle vCPUs that take no CPU",
        slot=abi.P_DOMAIN_VCPUS, metavar="D")
    duration: float = option(3.0, "measured seconds", unit="s")
    warmup: float = option(1.0, "warm-up seconds, reported but not measured", unit="s")
    seed: int = option(1, "seed for every random choice (default: from the clock)", cli=False)
    cpus: str | None = option(None, "host CPUs to use, e.g. 0,2-5 (default: all allowed); with --placement given, "
                              "vCPU i runs on the i-th CPU written")
    placement: str = option("compact", "where vCPUs go: 'compact' fills a NUMA node's cores before the next node's, "
                            "'scatter' deals them round-robin across nodes, 'given' takes --cpus in order; SMT "
                            "siblings last (see 'testbed placement')", metavar="{compact,scatter,given}")
    numa_home: int | None = option(None, "NUMA node of the domain's shared lines (lock, cursor, epoch, TLB clock) "
                                   "(default: vCPU 0's node)")
    frames_numa: str = option("interleave", "NUMA placement of the machine frames: 'interleave' across the allowed "
                              "nodes, or 'home' on --numa-home's node", metavar="{interleave,home}")
    oversubscribe: bool = option(False, "allow more vCPUs than CPUs (they share CPUs)")
    workload: str = option("uniform", "operation mix (see 'testbed workloads')")
    frames: int = option(4096, "machine frames in the arena", slot=abi.P_FRAMES)
    working_set: int | None = option(None, "MFNs drawn from (default: all frames)", slot=abi.P_WORKING_SET)
    hot_set: int = option(8, "hot workload: size of the hot set", slot=abi.P_HOT)
    entries: int | None = option(None, "MAPCACHE_VCPU_ENTRIES (default: the variant's, see 'testbed variants')",
                                 slot=abi.P_ENTRIES)
    hash_entries: int = option(8, "MAPHASH_ENTRIES", slot=abi.P_HASH, flag="--hash")
    levels: int = option(4, "PAGING_LEVELS", slot=abi.P_LEVELS)
    nest: int | None = option(None, "ptwalk: most mappings held at once (default levels**2); nest-same: how "
                              "often the one MFN is nested (default levels**2 - levels)", slot=abi.P_NEST)
    unchecked: bool = option(False, "run a geometry the variant rejects (e.g. too small for a nested walk)")
    tlb_entries: int = option(64, "simulated TLB entries")
    tlb_ways: int = option(4, "simulated TLB associativity", slot=abi.P_TLB_WAYS)
    cost_flush_one: int = option(tlb.COST_FLUSH_ONE, "cycles per invlpg (0: off)", slot=abi.P_COST_FLUSH_ONE)
    cost_flush_all: int = option(tlb.COST_FLUSH_ALL, "cycles per full flush (0: off)", slot=abi.P_COST_FLUSH_ALL)
    cost_walk: int = option(tlb.COST_WALK, "cycles per TLB miss walk (0: off)", slot=abi.P_COST_WALK)
    cost_refill: int = option(tlb.COST_REFILL, "guest accesses after a full flush that each pay a walk "
                              f"(default {tlb.COST_REFILL}: an L1 dTLB's 4 KiB entries)", slot=abi.P_COST_REFILL)
    guest_work: int = option(2000, "guest workload: work units between maps", slot=abi.P_GUEST_WORK)
    burst: int = option(4, "guest/timers: map operations per hypercall", slot=abi.P_BURST)
    slack_us: float = option(SLACK_US, "timers: deadline slack in microseconds (FreeBSD's et_min_period, "
                             "XENTIMER_MIN_PERIOD_IN_NSEC)", unit="us")
    panic_streak: int = option(PANIC_STREAK, "timers: consecutive -ETIME that panic (FreeBSD 10.4's "
                               "xentimer_et_start panics on its 60th try: 59 in a row)", slot=abi.P_PANIC_STREAK)
    sshot_future: str = option(
        "honoured", "timers: Xen's answer to VCPU_SSHOTTMR_future with the deadline passed: 'honoured' returns "
        "-ETIME (Xen 4.17 and older), 'ignored' arms the timer anyway, no -ETIME (Xen 4.18 and later, commit "
        "19c6cbd909)", metavar="{honoured,ignored}")
    lat_every: int = option(6, "sample map latency every 2**k maps", slot=abi.P_LAT_EVERY)
    long_hold: int = option(0, "cycles to spin inside the critical section", slot=abi.P_LONG_HOLD)
    chunk_ms: float = option(5.0, "kernel chunk between stop checks, ms", unit="ms")
    sched: str | None = option(
        None, "with more vCPUs than CPUs: 'hypervisor' (default) schedules vCPUs as a hypervisor does, switching "
        "only between operations; 'host' lets the host preempt them anywhere (lock-holder preemption, as with "
        "guest spinlocks). No effect with vCPUs <= CPUs", metavar="{hypervisor,host}")
    timeslice_us: float = option(TIMESLICE_US, "--sched hypervisor: time slice (Xen credit2's rate limit)", unit="us")
    lock: str | None = option(None, "--lock: one of the variant's LOCKS; default its first", cli=False)
    irq_rate: float = option(0.0, "a stress Xen forbids: simulated interrupts per second per vCPU whose handler "
                             "maps a page inside whatever the vCPU does (Xen's handlers do not map: traps.c, "
                             "\"map_domain_page() is not IRQ-safe\"; --nmi-rate is what can); 0: off")
    nmi_rate: float = option(0.0, "simulated NMIs per second per vCPU: arrivals local_irq_save does not defer, at "
                             "the same points inside map and unmap, whose handler maps, accesses and unmaps a page "
                             "as Xen's NMI paths can (0: off)")
    recursive: float = option(0.0, "ptwalk: chance that a level's entry maps a table an earlier level of the walk "
                              "mapped, as a PV guest's linear (recursive) page table does (the testbed's choice: 0, "
                              "off)")
    guest_pages: int = option(tlb.GUEST_PAGES, "guest/timers: the guest's own pages, touched through the TLB before "
                              "each hypercall, so that a full flush costs the walks of what it dropped (0: off, and "
                              "--cost-refill charges instead)", slot=abi.P_GUEST_PAGES)
    pcid: str = option("off", "a one-slot flush as Xen's flush_area_local does it: 'off' one invlpg, 'on' two "
                       "INVPCIDs (CR4.PCIDE), 'xpti' four", metavar="{off,on,xpti}")
    cost_invpcid: int = option(tlb.COST_INVPCID, "cycles per INVPCID (--pcid on/xpti; 0: off)")
    dom_layout: str | None = option(
        None, "where the domain's shared words sit, for a variant that lays them out more than one way: 'xen' as "
        "Xen's struct mapcache_domain (cursor, lock, epoch and TLB stamp on one cache line, the ticket lock one "
        "head/tail word) or 'padded' (each on a line of its own); default the variant's first", metavar="{xen,padded}")
    xen_tree: str | None = option(None, "--variant xen: the Xen tree whose xen/arch/x86/domain_page.c runs",
                                  metavar="DIR")
    xen_patches: tuple = option((), "--variant xen: patches applied to the tree first (--xen-patch FILE, repeatable)",
                                cli=False)
    refcount_wrap: str = option("stop", "an 8-bit refcount at 256: 'stop' with refcount_error, or 'wrap' "
                                "silently as the seed's uint8_t does", metavar="{stop,wrap}")

    def resolved(self, variant=None) -> "RunConfig":
        """Fill the defaults that depend on other fields (``variant``: this config's registry entry,
        when the caller has looked it up)."""
        v = variant or registry.get(self.variant)
        return v.module.resolve(dataclasses.replace(
            self,
            domain_vcpus=self.domain_vcpus if self.domain_vcpus is not None else self.vcpus,
            entries=self.entries if self.entries is not None else v.module.DEFAULT_ENTRIES,
            working_set=self.working_set if self.working_set is not None else self.frames,
            nest=self.nest if self.nest is not None else default_nest(self.workload, self.levels),
            lock=self.lock if self.lock is not None or not v.locks else v.locks[0],
            dom_layout=self.dom_layout if self.dom_layout is not None or not v.dom_layouts else v.dom_layouts[0],
        ))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


REFCOUNT_WRAP = ("stop", "wrap")
FRAMES_NUMA = ("interleave", "home")


def default_nest(workload: str, levels: int) -> int:
    """PAGING_LEVELS**2 mappings held at most: nest-same holds --levels more than --nest."""
    return max(1, levels ** 2 - levels) if workload == "nest-same" else levels ** 2


def held_most(cfg: "RunConfig") -> int:
    """The most mappings one vCPU holds at once (a resolved config): the rows of ``live``."""
    return cfg.nest + (cfg.levels if cfg.workload == "nest-same" else 0)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


_VALIDATED: set = set()       # configs validate() returned: a run of one is not checked again


def validate(cfg: RunConfig, variant=None) -> RunConfig:
    """A resolved, checked config; raises UsageError naming the problem and the fix.

    ``variant``: the config's registry entry, when the caller has it (``runplan.plan``)."""
    if cfg in _VALIDATED:
        return cfg
    v = variant or registry.get(cfg.variant)
    if cfg.vcpus < 1:
        raise UsageError(f"--vcpus {cfg.vcpus}: need at least 1 vCPU")
    if cfg.vcpus > MAX_VCPUS:
        raise UsageError(f"--vcpus {cfg.vcpus}: at most {MAX_VCPUS} vCPUs are supported")
    if not cfg.duration > 0:
        raise UsageError(f"--duration {cfg.duration}: must be a positive number of seconds")
    if not cfg.warmup >= 0:
        raise UsageError(f"--warmup {cfg.warmup}: must be 0 or more seconds")
    if cfg.seed < 0 or cfg.seed >= 2**63:
        raise UsageError(f"--seed {cfg.seed}: must be between 0 and 2**63-1")
    if cfg.lock is not None and cfg.lock not in v.locks:
        with_locks = [f"{w.name}: {', '.join(w.locks)}" for w in registry.REAL if w.locks]
        if not v.locks:
            raise UsageError(f"--lock {cfg.lock}: variant {v.name} has no lock; --lock applies to "
                             f"{'; '.join(with_locks)}")
        raise UsageError(f"--lock {cfg.lock}: unknown lock for {v.name}{did_you_mean(cfg.lock, v.locks)}; "
                         f"choose one of: {', '.join(v.locks)}")
    if cfg.dom_layout is not None and cfg.dom_layout not in v.dom_layouts:
        with_layouts = "; ".join(f"{w.name}: {', '.join(w.dom_layouts)}" for w in registry.REAL if w.dom_layouts)
        if not v.dom_layouts:
            raise UsageError(f"--dom-layout {cfg.dom_layout}: variant {v.name} has one layout of its domain words; "
                             f"--dom-layout applies to {with_layouts}")
        raise UsageError(f"--dom-layout {cfg.dom_layout}: unknown layout for {v.name}; choose one of: "
                         f"{', '.join(v.dom_layouts)}")
    if cfg.domain_vcpus is not None and not cfg.vcpus <= cfg.domain_vcpus <= MAX_DOMAIN_VCPUS:
        if cfg.domain_vcpus < cfg.vcpus:
            raise UsageError(f"--domain-vcpus {cfg.domain_vcpus}: below --vcpus {cfg.vcpus}; the domain holds the "
                             f"vCPUs that run, give at least {cfg.vcpus}")
        raise UsageError(f"--domain-vcpus {cfg.domain_vcpus}: Xen gives a domain at most {MAX_DOMAIN_VCPUS} vCPUs "
                         "(MAX_VIRT_CPUS); give fewer")
    if cfg.sshot_future not in SSHOT_FUTURE:
        raise UsageError(f"--sshot-future {cfg.sshot_future!r}: choose one of: {', '.join(SSHOT_FUTURE)} "
                         "(honoured: Xen 4.17 and older; ignored: Xen 4.18 and later)")
    if (cfg.xen_tree or cfg.xen_patches) and v.kind != "xen":
        raise UsageError(f"--xen-tree / --xen-patch apply to --variant xen, not {cfg.variant}")
    if cfg.refcount_wrap not in REFCOUNT_WRAP:
        raise UsageError(f"--refcount-wrap {cfg.refcount_wrap!r}: choose one of: {', '.join(REFCOUNT_WRAP)} "
                         "(stop: a wrapped 8-bit refcount ends the run; wrap: it wraps as the seed's uint8_t does)")
    check_placement(cfg.placement, cfg.cpus)
    if cfg.frames_numa not in FRAMES_NUMA:
        raise UsageError(f"--frames-numa {cfg.frames_numa!r}: choose one of: {', '.join(FRAMES_NUMA)} (interleave: "
                         "across the allowed NUMA nodes; home: on --numa-home's node)")
    if cfg.workload not in WORKLOADS:
        raise UsageError(f"unknown workload {cfg.workload!r}{did_you_mean(cfg.workload, WORKLOADS)}; choose one "
                         f"of: {', '.join(WORKLOADS)}")
    cfg = cfg.resolved(v)
    if cfg.frames < 1:
        raise UsageError(f"--frames {cfg.frames}: need at least 1 frame")
    if not 1 <= cfg.working_set <= cfg.frames:
        raise UsageError(f"--working-set {cfg.working_set}: must be between 1 and --frames ({cfg.frames})")
    if not _pow2(cfg.hash_entries):
        raise UsageError(
            f"--hash {cfg.hash_entries}: MAPHASH_ENTRIES must be a power of two (the hash is mfn & (hash - 1))"
        )
    if cfg.levels < 1 or cfg.levels > 8:
        raise UsageError(f"--levels {cfg.levels}: PAGING_LEVELS must be between 1 and 8")
    if cfg.entries < 1 or cfg.entries > v.module.MAX_ENTRIES:
        raise UsageError(
            f"--entries {cfg.entries}: {v.module.NAME} holds at most {v.module.MAX_ENTRIES} slots per vCPU in its bitmap"
        )
    if cfg.nest < 1 or cfg.nest > 4096:
        raise UsageError(f"--nest {cfg.nest}: must be between 1 and 4096")
    if cfg.hot_set < 1:
        raise UsageError(f"--hot-set {cfg.hot_set}: must be at least 1")
    if (cfg.tlb_ways < 1 or cfg.tlb_entries < cfg.tlb_ways or cfg.tlb_entries % cfg.tlb_ways
            or not _pow2(cfg.tlb_entries // cfg.tlb_ways)):
        raise UsageError(
            f"--tlb-entries {cfg.tlb_entries} --tlb-ways {cfg.tlb_ways}: entries must be ways times a power of two "
            "(the number of sets), e.g. 64 and 4"
        )
    if cfg.pcid not in tlb.PCID_MODES:
        raise UsageError(f"--pcid {cfg.pcid!r}: choose one of: {', '.join(tlb.PCID_MODES)} (off: invlpg; on: two "
                         "INVPCIDs per one-slot flush; xpti: four)")
    if not 0 <= cfg.recursive <= 1:        # also refuses nan
        raise UsageError(f"--recursive {cfg.recursive:g}: a probability, between 0 (off) and 1")
    if cfg.recursive > 0 and cfg.workload != "ptwalk":
        raise UsageError(f"--recursive {cfg.recursive:g}: recursive page-table walks are the ptwalk workload's; "
                         "add --workload ptwalk or drop --recursive")
    if not 0 <= cfg.guest_pages <= 1 << 20:
        raise UsageError(f"--guest-pages {cfg.guest_pages}: must be between 0 (off) and {1 << 20}")
    for name in ("cost_flush_one", "cost_flush_all", "cost_walk", "cost_refill", "cost_invpcid", "guest_work",
                 "long_hold"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be 0 or more")
    if not 1 <= cfg.burst <= 1 << 20:
        raise UsageError(f"--burst {cfg.burst}: must be between 1 and {1 << 20}")
    if not cfg.slack_us > 0:
        raise UsageError(f"--slack-us {cfg.slack_us}: must be a positive number of microseconds")
    if cfg.panic_streak < 1:
        raise UsageError(f"--panic-streak {cfg.panic_streak}: must be at least 1")
    if not 0 <= cfg.lat_every <= 40:
        raise UsageError(f"--lat-every {cfg.lat_every}: must be between 0 and 40 (sample every 2**k maps)")
    if not cfg.chunk_ms > 0:
        raise UsageError(f"--chunk-ms {cfg.chunk_ms}: must be positive")
    if cfg.sched is not None and cfg.sched not in SCHED_MODELS:
        raise UsageError(f"--sched {cfg.sched!r}: unknown scheduling model; choose one of: {', '.join(SCHED_MODELS)}")
    if not TIMESLICE_MIN_US <= cfg.timeslice_us <= TIMESLICE_MAX_US:
        raise UsageError(
            f"--timeslice-us {cfg.timeslice_us:g}: must be between {TIMESLICE_MIN_US:g} and {TIMESLICE_MAX_US:g} "
            f"microseconds (Xen's own bounds; its credit2 default is {TIMESLICE_US:g})"
        )
    top = irq.max_rate(tsc_hz())
    if not 0 <= cfg.irq_rate <= top:       # also refuses nan
        raise UsageError(
            f"--irq-rate {cfg.irq_rate:g}: interrupts per second per vCPU; must be between 0 (off) and {top:,} "
            f"(one every {irq.MIN_INTERVAL_CYCLES} cycles of this host's cycle counter)"
        )
    if not 0 <= cfg.nmi_rate <= top:       # also refuses nan
        raise UsageError(
            f"--nmi-rate {cfg.nmi_rate:g}: NMIs per second per vCPU; must be between 0 (off) and {top:,} "
            f"(one every {irq.MIN_INTERVAL_CYCLES} cycles of this host's cycle counter)"
        )
    if cfg.nmi_rate > 0 and cfg.irq_rate > 0:
        raise UsageError(f"--nmi-rate {cfg.nmi_rate:g} with --irq-rate {cfg.irq_rate:g}: a run simulates one kind "
                         "of interrupt; drop one of them")
    v.module.validate(cfg)             # the design's own rules (contract.py)
    _VALIDATED.add(cfg)
    return cfg


def sched_model(cfg: RunConfig, cpus: int) -> str:
    """The scheduling model a run of ``cfg`` on ``cpus`` allowed CPUs uses.

    With no more vCPUs than CPUs each vCPU has a CPU of its own ("dedicated") and
    --sched has no effect; beyond that, --sched picks, "hypervisor" by default.
    """
    if cfg.vcpus <= cpus:
        return "dedicated"
    return cfg.sched or "hypervisor"


def params(cfg: RunConfig, variant=None) -> np.ndarray:
    """The kernels' parameter array for a validated config: every option declared with an ``abi``
    slot as it is, then the values the kernels need derived (``variant``: as for ``validate``)."""
    v = variant or registry.get(cfg.variant)
    p = np.zeros(abi.N_PARAMS, dtype=np.int64)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("slot") is not None:
            p[f.metadata["slot"]] = getattr(cfg, f.name)
    p[abi.P_VARIANT] = v.vid
    p[abi.P_FAULT] = v.fault
    p[abi.P_LOCK] = v.locks.index(cfg.lock) if v.locks else 0
    p[abi.P_DOM_LAYOUT] = v.dom_layouts.index(cfg.dom_layout) if v.dom_layouts else 0
    p[abi.P_REFCOUNT_WRAP] = int(cfg.refcount_wrap == "wrap")
    p[abi.P_FRAME_WORDS] = abi.frame_words(cfg.vcpus)
    p[abi.P_SLOTS] = domain_vcpus(cfg) * cfg.entries
    p[abi.P_SSHOT_FUTURE] = int(cfg.sshot_future == "honoured")
    p[abi.P_WORKLOAD] = WORKLOADS[cfg.workload][0]
    p[abi.P_TLB_SETS] = cfg.tlb_entries // cfg.tlb_ways
    hz = tsc_hz()
    p[abi.P_CHUNK_CYCLES] = int(cfg.chunk_ms * 1e-3 * hz)
    p[abi.P_TSC_KHZ] = int(hz / 1000)
    p[abi.P_TIMESLICE_NS] = int(cfg.timeslice_us * 1000)
    p[abi.P_IRQ_INTERVAL] = irq.interval_cycles(cfg.irq_rate or cfg.nmi_rate, hz)
    p[abi.P_NMI] = int(cfg.nmi_rate > 0)
    p[abi.P_RECURSIVE] = round(cfg.recursive * (1 << 16))
    if cfg.pcid != "off":              # flush_area_local: 2 or 4 INVPCIDs for one page (tlb.py)
        p[abi.P_COST_FLUSH_ONE] = tlb.PCID_MODES[cfg.pcid] * cfg.cost_invpcid
    hypercall = cfg.workload in ("guest", "timers")
    p[abi.P_GUEST_PAGES] = cfg.guest_pages if hypercall else 0
    if p[abi.P_GUEST_PAGES] > 0:
        p[abi.P_COST_REFILL] = 0       # the TLB charges what a full flush dropped (tlb.py)
    if cfg.workload == "timers":
        p[abi.P_SLACK] = int(cfg.slack_us * 1e-6 * hz)
    return p
