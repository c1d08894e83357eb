"""The layout contract between the harness, the kernels and the variants.

Kernels take numpy arrays and scalars (docs/variants.md, conventions 4 and 6). Tunable numbers
travel in one int64 parameter array ``p``, indexed by the ``P_*`` names below;
the names themselves are compile-time constants, the values are not. Per-vCPU
counters live in the vCPU's own cache-line-padded row of ``stats``, indexed by
the ``S_*`` names. Status codes (``ST_*``) are how a kernel reports what it
cannot handle: kernels never raise.

Within each family (``P_*``, ``S_*``, ``C_*``, ``M_*``, ``W_*``, ``ST_*``, ``WL_*``,
``SCHED_*``, ``V_*``) the ids are unique and below the family's size; they are
listed in order, and a gap is a reserved range (said where it is).
``tests/test_abi.py`` fails on a collision, and checks that the C port
(``csrc/testbed_op.c``) spells every id it shares with this file the same.
This module also holds the workload ids, the frame geometry and the kernels'
argument order: facts the harness, the vCPU worker, the configuration and the
C port share with the kernels.
"""

from .jit import kernel

# --- parameters (p[...]) ------------------------------------------------------------
P_VARIANT = 0          # variant id (registry)
P_FAULT = 1            # negative-control fault bits, 0 for the real variants
P_VCPUS = 2
P_FRAMES = 3           # machine frames in the arena
P_FRAME_WORDS = 4      # int64 words per frame
P_ENTRIES = 5          # MAPCACHE_VCPU_ENTRIES
P_HASH = 6             # MAPHASH_ENTRIES
P_LEVELS = 7           # PAGING_LEVELS
P_SLOTS = 8            # slots in the domain (domain vCPUs * entries)
P_WORKLOAD = 9
P_NEST = 10            # mappings held at once by the nested workload
P_TLB_SETS = 11
P_TLB_WAYS = 12
P_COST_FLUSH_ONE = 13  # cycles added per single-entry flush
P_COST_FLUSH_ALL = 14  # cycles added per full flush
P_COST_WALK = 15       # cycles added per page walk
P_WORKING_SET = 16     # MFNs the workload draws from
P_GUEST_WORK = 17      # guest workload: private work units between bursts
P_SCHED = 18           # scheduling model, SCHED_* below
P_LAT_EVERY = 19       # sample the map latency every 2**k operations
P_LONG_HOLD = 20       # cycles to spin inside critical sections
P_HOT = 21             # hot workload: size of the hot set
P_BURST = 22           # guest and timers workloads: map operations per hypercall
P_SLACK = 23           # timers workload: cycles between taking the deadline and arming the timer
P_PANIC_STREAK = 24    # timers workload: consecutive -ETIME that panic the guest (FreeBSD 10: 60)
P_CHUNK_CYCLES = 25    # a kernel call returns after about this many cycles (checked every 16 operations)
P_TIMESLICE_NS = 26    # --sched hypervisor: a vCPU's time slice
P_TSC_KHZ = 27         # cycle-counter ticks per millisecond
P_CHECK_EVERY_OP = 28  # 1: read the clock after every operation (a variant with a lock under --sched host)
P_LOCK = 29            # which of the variant's locks (its LOCKS, by index): --lock
P_COST_REFILL = 30     # guest accesses after a full flush that each pay a walk (--cost-refill)
P_DOM_LAYOUT = 31      # which of the variant's domain-word layouts (its DOM_LAYOUTS, by index): --dom-layout
P_REFCOUNT_WRAP = 32   # 1: a refcount wraps silently, as the seed's uint8_t does (--refcount-wrap wrap)
P_IRQ_INTERVAL = 34    # --irq-rate: mean cycles between simulated interrupts of one vCPU; 0: none
# 35..39: free
# 40..47 fidelity (domain, timers, TLB clock):
P_DOMAIN_VCPUS = 40    # vCPUs of the domain (--domain-vcpus, Xen's max_vcpus); the first P_VCPUS of them run
P_SSHOT_FUTURE = 41    # timers workload: 1 if Xen honours VCPU_SSHOTTMR_future (-ETIME; Xen <= 4.17), 0 if not
# 48..55: the cost model, NMIs, recursive walks, exposure (docs/cost-model.md)
P_NMI = 48             # 1: the simulated interrupts are NMIs (--nmi-rate): irq_save does not defer them
P_RECURSIVE = 49       # ptwalk: chance, in 1/2**16, that a level's entry maps an earlier level's table again (--recursive)
P_GUEST_PAGES = 50     # hypercall workloads: guest pages touched through the TLB before each hypercall (--guest-pages)
# Reserved ranges, one per area of work, so that parallel changes never collide:
# 40..47 fidelity (domain, timers), 48..55 cost model, NMIs, recursive walks, exposure,
# 56..59 Xen's own code, 60..63 command line and hosts.
N_PARAMS = 64

# --- per-vCPU counters (stats[vcpu, ...]) -------------------------------------------
S_OPS = 0              # operations completed
S_WRITES = 1           # frame writes performed
S_MAPS = 2
S_HASH_HITS = 3
S_TLB_HITS = 4
S_TLB_MISSES = 5
S_FLUSH_ONE = 6
S_FLUSH_ALL = 7
S_LOCK_ACQ = 8
S_LOCK_CONTENDED = 9
S_LOCK_SPIN = 10       # cycles spent spinning for the lock
S_LOCK_HOLD = 11       # cycles the lock was held, summed over the sampled acquisitions
S_STALE = 12           # accesses that reached a frame other than the one mapped
S_REFCNT_ERR = 13
S_EXHAUSTED = 14
S_EPOCH_FLUSH = 15
S_HARVEST = 16         # garbage harvests (wraps that reclaimed slots)
S_WORK = 17            # guest work units completed
S_INVARIANT = 18       # violations found by the variant's own checks
S_LAT_SAMPLES = 19
S_LAT_CYCLES = 20
S_LAT_MAX = 21         # a maximum, not a sum
S_TIMER_SETS = 22      # timers workload: single-shot timers programmed
S_ETIME = 23           # ... answered -ETIME (the deadline had passed)
S_STREAK_MAX = 24      # ... longest run of consecutive -ETIME (a maximum)
S_PANICS = 25          # ... guest panics (PANIC_STREAK consecutive -ETIME)
S_TIMER_CYCLES = 26    # ... cycles from deadline taken to timer armed, summed
S_LOCK_HOLD_SAMPLES = 27  # acquisitions whose hold time was measured (those of latency-sampled maps)
S_HANDOFFS = 28        # acquisitions of a lock another vCPU released while vCPUs waited for it
S_HANDOFF_CYCLES = 29  # ... cycles from that release to this acquisition, summed
S_LOCK_REACQ = 30      # acquisitions that re-took the lock this vCPU had released while others waited (barging)
N_COUNTERS = 32        # counters summed into totals live below this column
# harness and kernel words in the same row (written by the vCPU only)
S_HEARTBEAT = 32       # monotonic ns of the last finished chunk
S_STATUS = 33          # kernel status that ended the run, ST_*
S_STATE = 34           # W_* below
S_CORE = 35            # host CPU the vCPU is pinned to
S_PID = 36
S_NIVCSW = 37          # involuntary context switches
S_NVCSW = 38
S_LIVE = 39            # mappings live when the kernel stopped
S_CHUNKS = 40
S_STREAK = 41          # timers workload: current run of consecutive -ETIME
S_PROGRESS = 42        # bumped by the kernel per operation and per lock-spin round: the watchdog's pulse
S_MOVES_SEEN = 43      # moves the vCPU has taken in (flushed its TLB for)
S_SAMPLING = 44        # set while a latency-sampled map runs: the lock times its hold then
S_RUN_NS = 45          # time on a CPU (under --sched hypervisor: summed time slices)
S_WAIT_NS = 46         # time descheduled, waiting for a CPU (--sched hypervisor)
S_SWITCHES = 47        # context switches in (--sched hypervisor)
S_MAX_WAIT_NS = 48     # longest single wait for a CPU (--sched hypervisor)
S_BAD_SWITCH = 49      # switches away while holding a mapping or a lock: must stay 0
S_T_ENTRY = 50         # monotonic ns when the forked process began
S_T_READY = 51         # monotonic ns when it had attached the arena and pinned itself
S_USS_KB = 52          # the process's unique memory (private pages) when it finished, KiB
S_CPU_NS = 53          # CPU time the process used, when it finished
S_IRQ_TAKEN = 54       # simulated interrupts whose handler ran (testbed/irq.py)
S_IRQ_DEFERRED = 55    # ... that arrived while the variant had interrupts disabled (taken when it enabled them)
S_IRQ_MAPS = 56        # maps made by interrupt handlers, nested inside whatever the vCPU was doing
S_IRQ_INSIDE = 57      # interrupts taken inside a map or unmap, between the variant's steps
# 58..61: the oracle's checks; 62..63: cost counters
S_HELD_STALE = 58      # a held mapping, checked again before its unmap, translated to another frame
S_HELD_PTE = 59        # ... its PTE no longer mapped its MFN: the slot was taken away and reused while held
S_RECHECKS = 61        # held mappings checked again before their unmap
S_REFILL_LEFT = 62     # guest accesses still to pay a refill walk since the last full flush
S_REFILLS = 63         # refill walks paid (--cost-refill)
S_TIMER_LATE = 64      # timers workload: single-shot timers armed after their deadline (counted however Xen answers)
# 72..87: NMIs, the guest's pages, exposure (docs/cost-model.md)
S_NMI_IRQS_OFF = 72    # NMIs taken inside a map or unmap while the variant had interrupts disabled
S_GUEST_TOUCHES = 73   # guest page accesses through the TLB (--guest-pages)
S_GUEST_WALKS = 74     # ... that missed and paid a walk
S_DEADLOCKS = 75       # lock acquisitions refused because this CPU already holds the lock (an NMI inside it)
S_EXP_SAMPLES = 76     # exposure: sampled unmaps whose frame was followed until unreachable
S_EXP_CYCLES = 77      # ... cycles it stayed reachable, summed
S_EXP_OPS = 78         # ... operations it stayed reachable, summed
S_EXP_MAX_CYCLES = 79  # ... the longest, in cycles (a maximum)
S_EXP_MAX_OPS = 80     # ... the longest, in operations (a maximum)
S_EXP_INSTANTS = 81    # exposure: instants at which the reachable frames were counted
S_EXP_REACHABLE = 82   # ... frames reachable (a present PTE or this CPU's TLB entry) at those instants, summed
S_EXP_SLOT = 83        # exposure state: the followed slot + 1 (0: none)
S_EXP_MFN = 84         # ... the frame it mapped at the unmap
S_EXP_T0 = 85          # ... cycle counter at the first look after the unmap
S_EXP_OP0 = 86         # ... this vCPU's operation count then
# Reserved ranges, one per area of work: 64..71 fidelity (domain, timers), 72..87 cost model,
# NMIs, recursive walks, exposure, 88..103 Xen's own code (perfc), 104..111 command line,
# 112..119 hosts and prediction, 120..127 free.
# 88..103: a Xen tree's own domain_page.c (variants/xen.py; written by csrc/xen/shim.h, same ids)
S_XEN_MAPS = 88        # perfc map_domain_page_count: must equal the maps (no directmap shortcut)
S_XEN_TLB_FLUSH = 89   # perfc domain_page_tlb_flush
S_XEN_BUGS = 90        # ASSERT / BUG_ON / BUG / BUILD_BUG_ON of the Xen file that failed
S_XEN_BUG_LINE = 91    # ... the Xen file's line of the first (not a counter)
S_XEN_BUG_KIND = 92    # ... which macro: 1 ASSERT, 2 BUG_ON, 3 BUG, 4 BUILD_BUG_ON (not a counter)
S_XEN_DIRECT = 93      # maps the Xen file answered from the directmap: must stay 0
S_XEN_PTE_WRITES = 94  # l1e_write calls of the Xen file
# 95..103: free (Xen's own code)
# 104..111 command line: the worst sampled map latency per second, kept outside the kernel
# (testbed/latwatch.py): between chunks the worker folds S_LAT_MAX into these and resets it.
S_LAT_RUN_MAX = 104    # the run's largest sampled map latency, cycles (a maximum)
S_LAT_SEC = 105        # the second since the start that the worker is filling in
S_LAT_RING = 106       # 106..111: largest sampled map latency of each of the last LAT_RING seconds, slot sec % 6
LAT_RING = 6
N_STATS = 128
MAX_COUNTERS = (S_LAT_MAX, S_STREAK_MAX, S_EXP_MAX_CYCLES, S_EXP_MAX_OPS)   # maxima, not sums
LAT_BINS = 64          # log2 histogram of map latency in cycles

COUNTER_NAMES = {
    S_OPS: "ops", S_WRITES: "writes", S_MAPS: "maps", S_HASH_HITS: "hash_hits",
    S_TLB_HITS: "tlb_hits", S_TLB_MISSES: "tlb_misses", S_FLUSH_ONE: "tlb_flush_one",
    S_FLUSH_ALL: "tlb_flush_all", S_LOCK_ACQ: "lock_acquisitions", S_LOCK_CONTENDED: "lock_contended",
    S_LOCK_SPIN: "lock_spin_cycles", S_LOCK_HOLD: "lock_hold_cycles", S_STALE: "stale_translations",
    S_REFCNT_ERR: "refcount_errors", S_EXHAUSTED: "exhaustion", S_EPOCH_FLUSH: "epoch_flushes",
    S_HARVEST: "garbage_harvests", S_WORK: "guest_work", S_INVARIANT: "invariant_violations",
    S_LAT_SAMPLES: "lat_samples", S_LAT_CYCLES: "lat_cycles", S_LAT_MAX: "lat_max_cycles",
    S_TIMER_SETS: "timer_sets", S_ETIME: "etime", S_STREAK_MAX: "etime_streak_max", S_PANICS: "panics",
    S_TIMER_CYCLES: "timer_path_cycles", S_LOCK_HOLD_SAMPLES: "lock_hold_samples",
    S_HANDOFFS: "lock_handoffs", S_HANDOFF_CYCLES: "lock_handoff_cycles", S_LOCK_REACQ: "lock_reacquired",
    S_HELD_STALE: "held_stale_translations", S_HELD_PTE: "reused_held_slots", S_RECHECKS: "held_rechecks",
    S_IRQ_TAKEN: "irq_taken", S_IRQ_DEFERRED: "irq_deferred", S_IRQ_MAPS: "irq_maps", S_IRQ_INSIDE: "irq_inside",
    S_TIMER_LATE: "timer_late",
    S_NMI_IRQS_OFF: "nmi_irqs_off", S_GUEST_TOUCHES: "guest_touches", S_GUEST_WALKS: "guest_walks",
    S_DEADLOCKS: "deadlocks", S_EXP_SAMPLES: "exposure_samples", S_EXP_CYCLES: "exposure_cycles",
    S_EXP_OPS: "exposure_ops", S_EXP_MAX_CYCLES: "exposure_max_cycles", S_EXP_MAX_OPS: "exposure_max_ops",
    S_EXP_INSTANTS: "exposure_instants", S_EXP_REACHABLE: "exposure_reachable",
    S_XEN_MAPS: "map_domain_page_count", S_XEN_TLB_FLUSH: "domain_page_tlb_flush", S_XEN_BUGS: "xen_assertions",
    S_XEN_DIRECT: "xen_directmap_maps", S_XEN_PTE_WRITES: "xen_pte_writes",
}

# --- workloads (p[P_WORKLOAD]); their names and descriptions are config.WORKLOADS ----
WL_UNIFORM = 0
WL_HOT = 1
WL_PTWALK = 2
WL_GUEST = 3
WL_TIMERS = 4
WL_NEST_SAME = 5       # one MFN nested --nest deep, then --levels others, all held

# --- machine frames (frames[mfn, ...]) ----------------------------------------------
FRAME_HDR = 8          # words: the MFN in word 0, then padding to the first counter line


def frame_words(vcpus: int) -> int:
    """Frame size in words: at least a 4 KiB page, and one cache line per vCPU's counter."""
    return max(512, FRAME_HDR + 8 * vcpus)


@kernel
def counter_col(vcpu):
    """The word of a frame that counts ``vcpu``'s writes to it (its own cache line)."""
    return FRAME_HDR + 8 * vcpu


# --- the kernels' arguments ----------------------------------------------------------
# run_ops(n, vcpu, *kernel_args(...)): the order the compiled loop and the C port take.
KERNEL_ARRAYS = ("dom", "pte", "dbits", "vst", "frames", "expect", "stats", "hist", "live")


def kernel_args(views: dict, p, tlbv, rng) -> tuple:
    """The argument tuple of ``loops.run_ops`` after (n, vcpu): the parameters, the arena's
    arrays (``KERNEL_ARRAYS``), this vCPU's TLB and its random state. The harness, the vCPU
    worker, the benchmarks and the tests all build it here."""
    return (p, *(views[name] for name in KERNEL_ARRAYS), tlbv, rng)


# --- worker states (stats[vcpu, S_STATE]) -------------------------------------------
W_BOOT = 0
W_READY = 1
W_RUNNING = 2
W_DONE = 3
W_PAUSED = 4           # between chunks, waiting for C_PAUSE to clear (stutter, quiescent checks)
W_DESCHED = 5          # --sched hypervisor: descheduled at an operation boundary, blocked until given a CPU

# --- scheduling models (p[P_SCHED]) ---------------------------------------------------
SCHED_DEDICATED = 0    # no more vCPUs than CPUs: each vCPU has a CPU of its own
SCHED_HYPERVISOR = 1   # the testbed schedules vCPUs, switching only between operations
SCHED_HOST = 2         # the host's scheduler preempts vCPU processes anywhere
SCHED_NAMES = {SCHED_DEDICATED: "dedicated", SCHED_HYPERVISOR: "hypervisor", SCHED_HOST: "host"}

# --- control words (ctl[...]), each on its own cache line ---------------------------
C_START = 0
C_STOP = 8
C_PAUSE = 16           # while set, vCPUs wait between chunks
C_SEQ = 24             # bumped after every change of the words above: the futex the vCPUs sleep on
C_STOP_NS = 25         # monotonic ns when the stop flag was set
N_CTL = 32

# --- the parent's mailbox to each vCPU (mail[vcpu, ...]), read between chunks ------
M_MOVES = 0            # times the parent re-pinned this vCPU: each is a context switch
M_CORE = 1             # the host CPU it was moved to
M_WAKE = 8             # --sched hypervisor: bumped to wake this vCPU (a futex word)
M_GRANT = 9            # ... the host CPU + 1 it was given by the vCPU that handed over, 0 if none
N_MAIL = 16

# --- the hypervisor scheduler's run queue (runq[...]), guarded by a process-shared lock --
RQ_HEAD = 0            # next vCPU to get a CPU: ring[head % capacity]
RQ_TAIL = 8            # where the next descheduled vCPU queues
RQ_RING = 16           # the ring of vCPU ids, capacity = vcpus

# --- kernel status codes --------------------------------------------------------------
ST_OK = 0
ST_EXHAUSTED = 1       # no free mapcache slot: Xen's BUG()
ST_REFCOUNT = 2        # a refcount wrapped or went negative
ST_BAD_VA = 3          # unmap of an address that is not mapped
ST_BAD_VARIANT = 4     # p[P_VARIANT] names no registered variant: the dispatch runs nothing
ST_ORDER = 5           # unmap out of the order the variant requires (kmap-local: last mapped, first unmapped)
ST_DEADLOCK = 6        # a lock taken by the CPU that holds it (an NMI handler inside the critical section)
ST_XEN_BUG = 7         # a Xen file's ASSERT / BUG_ON failed (csrc/xen/shim.h): Xen would panic

STATUS_NAMES = {ST_OK: "ok", ST_EXHAUSTED: "exhaustion", ST_REFCOUNT: "refcount_error", ST_BAD_VA: "bad_unmap",
                ST_BAD_VARIANT: "bad_variant", ST_ORDER: "unmap_order",
                ST_DEADLOCK: "deadlock", ST_XEN_BUG: "xen_assertion"}

# Virtual addresses handed out by map: mapcache slots sit above this bit, the direct map below.
MAPCACHE_VA = 1 << 40

# Words reserved at the start of each vCPU's variant-state row for the harness and TLB.
V_TLBFLUSH_TIME = 0    # this CPU's TLB clock stamp of its last full flush
V_IRQ_OFF = 1          # simulated interrupts (testbed/irq.py): non-zero while disabled (local_irq_save depth)
V_IRQ_PENDING = 2      # ... arrival points left before the pending interrupt arrives; -1 deferred; 0 none
V_IRQ_NEXT = 3         # ... cycle counter at which the next interrupt is due (0: not yet drawn)
V_IRQ_RNG = 4          # ... state of the vCPU's interrupt generator (seeded from seed + vcpu)
V_IRQ_STATUS = 5       # ... status of a handler's map or unmap that failed, ST_OK otherwise
V_RESERVED = 8
