/* testbed_op.c: the operation loop of testbed.kernels.run_ops, in C.
 *
 * The yardstick for the compiled loop: what the same work costs without numba. It is a
 * line-by-line port of run_ops and everything it calls (kernels.py, tlb.py, atomics.py, and
 * every design of the registry: variants/directmap.py, locked.py with its three locks,
 * lockless.py, percpu.py, kmap_local.py, fault bits of the negative controls included, and the
 * simulated interrupts of irq.py),
 * every workload included, and it runs on
 * the very arrays the harness lays out (testbed.native passes their addresses and row
 * strides), so over the same seed and operation count it leaves the same counters, frames,
 * expect rows, TLB and mapcache state as the compiled loop (tests/test_native.py checks
 * this). Counters that measure time (cycle sums, the latency histogram's bins) differ, as
 * they do between two runs of the compiled loop.
 *
 * Keep it in step with the kernels: a change to run_ops or to a variant's map / unmap
 * changes this file in the same commit, or the equality test fails. The variant ids are the
 * registry's (variants/__init__.py TABLE, n-th distinct module = id n); testbed_variants
 * below names them in that order and testbed.native refuses to load a port that disagrees.
 *
 * Every tunable is read from the int64 array p[] at run time, as the kernels read it, so the
 * C compiler cannot specialise on values numba cannot see either. Helpers numba inlines at
 * the IR level (inline_kernel) are always inlined here; the others (kernel) are left to the
 * compiler, as LLVM decides for numba's separately compiled functions.
 */
#include <stdint.h>
#include <x86intrin.h>

typedef int64_t i64;
typedef uint64_t u64;

/* --- abi.py --------------------------------------------------------------------------------- */
enum {
  P_VARIANT = 0, P_FAULT = 1, P_VCPUS = 2, P_FRAMES = 3, P_FRAME_WORDS = 4, P_ENTRIES = 5, P_HASH = 6,
  P_LEVELS = 7, P_SLOTS = 8, P_WORKLOAD = 9, P_NEST = 10, P_TLB_SETS = 11, P_TLB_WAYS = 12,
  P_COST_FLUSH_ONE = 13, P_COST_FLUSH_ALL = 14, P_COST_WALK = 15, P_WORKING_SET = 16, P_GUEST_WORK = 17,
  P_LAT_EVERY = 19, P_LONG_HOLD = 20, P_HOT = 21, P_BURST = 22, P_SLACK = 23, P_PANIC_STREAK = 24,
  P_CHUNK_CYCLES = 25, P_CHECK_EVERY_OP = 28, P_LOCK = 29, P_COST_REFILL = 30, P_DOM_LAYOUT = 31,
  P_REFCOUNT_WRAP = 32, P_IRQ_INTERVAL = 34,
  P_SSHOT_FUTURE = 41, P_NMI = 48, P_RECURSIVE = 49, P_GUEST_PAGES = 50,
};
enum {
  S_OPS = 0, S_WRITES = 1, S_MAPS = 2, S_HASH_HITS = 3, S_TLB_HITS = 4, S_TLB_MISSES = 5, S_FLUSH_ONE = 6,
  S_FLUSH_ALL = 7, S_LOCK_ACQ = 8, S_LOCK_CONTENDED = 9, S_LOCK_SPIN = 10, S_LOCK_HOLD = 11, S_STALE = 12,
  S_REFCNT_ERR = 13, S_EXHAUSTED = 14, S_EPOCH_FLUSH = 15, S_HARVEST = 16, S_WORK = 17, S_INVARIANT = 18,
  S_LAT_SAMPLES = 19, S_LAT_CYCLES = 20, S_LAT_MAX = 21, S_TIMER_SETS = 22, S_ETIME = 23, S_STREAK_MAX = 24,
  S_PANICS = 25, S_TIMER_CYCLES = 26, S_LOCK_HOLD_SAMPLES = 27, S_HANDOFFS = 28, S_HANDOFF_CYCLES = 29,
  S_LOCK_REACQ = 30, S_LIVE = 39, S_STREAK = 41, S_PROGRESS = 42,
  S_SAMPLING = 44, S_IRQ_TAKEN = 54, S_IRQ_DEFERRED = 55, S_IRQ_MAPS = 56, S_IRQ_INSIDE = 57,
  S_HELD_STALE = 58, S_HELD_PTE = 59, S_RECHECKS = 61, S_REFILL_LEFT = 62, S_REFILLS = 63,
  S_TIMER_LATE = 64,
  S_NMI_IRQS_OFF = 72, S_GUEST_TOUCHES = 73, S_GUEST_WALKS = 74, S_DEADLOCKS = 75, S_EXP_SAMPLES = 76,
  S_EXP_CYCLES = 77, S_EXP_OPS = 78, S_EXP_MAX_CYCLES = 79, S_EXP_MAX_OPS = 80, S_EXP_INSTANTS = 81,
  S_EXP_REACHABLE = 82, S_EXP_SLOT = 83, S_EXP_MFN = 84, S_EXP_T0 = 85, S_EXP_OP0 = 86,
};
enum { ST_OK = 0, ST_EXHAUSTED = 1, ST_REFCOUNT = 2, ST_BAD_VA = 3, ST_BAD_VARIANT = 4, ST_ORDER = 5, ST_DEADLOCK = 6 };
#define LAT_BINS 64
#define MAPCACHE_VA ((i64)1 << 40)
#define V_TLBFLUSH_TIME 0
#define V_IRQ_OFF 1
#define V_IRQ_PENDING 2
#define V_IRQ_NEXT 3
#define V_IRQ_RNG 4
#define V_IRQ_STATUS 5
#define IRQ_SPAN 128 /* irq.py SPAN */
#define V_RESERVED 8
enum { WL_UNIFORM = 0, WL_HOT = 1, WL_PTWALK = 2, WL_GUEST = 3, WL_TIMERS = 4, WL_NEST_SAME = 5 };
#define FRAME_HDR 8

/* --- kernels.py, tlb.py --------------------------------------------------------------------- */
enum { T_TAG = 0, T_PFN = 1, T_AGE = 2, T_COLS = 3 };
#define PTE_PRESENT ((i64)1 << 62)
#define PTE_MFN_MASK (PTE_PRESENT - 1)
#define D_TLBCLOCK 0
#define CLOCK_MASK 0xFFFFFFFFLL
#define GUEST_TAG ((i64)1 << 32)

/* --- variants ------------------------------------------------------------------------------- */
/* Variant ids, in the registry's order (variants/__init__.py TABLE). */
enum { VID_DIRECTMAP = 0, VID_LOCKED = 1, VID_LOCKLESS = 2, VID_PERCPU = 3, VID_KMAP_LOCAL = 4 };
const char testbed_variants[] = "directmap,locked,lockless,percpu,kmap-local";
/* locked.py */
enum { LOCK_TICKET = 0, LOCK_MCS = 1, LOCK_TAS = 2 };
const char testbed_locks[] = "ticket,mcs,tas";
#define TAS_BACKOFF_MAX 256
enum { LAYOUT_XEN = 0, LAYOUT_PADDED = 1 };
const char testbed_dom_layouts[] = "xen,padded";
#define X_CURSOR 8
#define X_LOCK 9
#define X_EPOCH 10
#define X_TLBFLUSH_TS 11
#define X_LOCK_OWNER 16
#define X_HANDOFF_TSC 17
#define X_HANDOFF_FROM 18
#define D_LOCK_HEAD 8
#define D_LOCK_TAIL 9
#define D_LOCK_OWNER 10
#define D_MCS_TAIL 11
#define D_TAS 12
#define D_HANDOFF_TSC 13
#define D_HANDOFF_FROM 14
#define D_CURSOR 16
#define D_EPOCH 24
#define D_TLBFLUSH_TS 32
#define D_TAS_WAITERS 40
#define D_MCS_NODES 48
#define N_NEXT 0
#define N_LOCKED 1
#define V_SHADOW_EPOCH V_RESERVED
#define V_HASH (V_RESERVED + 8)
#define NOTINUSE (-1)
#define LK_FAULT_NO_LOCK 1
#define LK_FAULT_NO_EPOCH_FLUSH 2
#define LK_FAULT_GARBAGE_HELD 4
#define LK_FAULT_GARBAGE_PTE 8
#define REFCNT_LIMIT ((i64)1 << 32)
/* lockless.py */
#define LL_FAULT_NO_FLUSH 1
#define LL_FAULT_FREE_HELD 2
#define LL_FAULT_NO_IRQSAVE 4
#define REFCNT_MASK 0xFF
/* percpu.py */
#define PC_FAULT_NO_FLUSH 1
#define PC_FAULT_EAGER_REUSE 2
#define PC_V_CURSOR V_RESERVED
#define PC_V_HASH (V_RESERVED + 1)
/* kmap_local.py */
#define KM_FAULT_NO_FLUSH 1
#define KM_V_TOP V_RESERVED

#define INLINE static inline __attribute__((always_inline))

/* The arrays of one call: base pointers and row strides in int64 words. */
struct arrays {
  const i64 *p;
  i64 *dom, *pte, *dbits, *tlb, *frames, *erow, *srow, *vrow, *hrow, *lrow;
  u64 *rng;
  i64 fw, tlb_rows;
};

/* --- atomics.py: the instructions LLVM emits for the numba intrinsics ----------------------- */
INLINE i64 fetch_add(i64 *a, i64 i, i64 v) { return __atomic_fetch_add(&a[i], v, __ATOMIC_SEQ_CST); }
INLINE void fetch_or(i64 *a, i64 i, i64 v) { __atomic_fetch_or(&a[i], v, __ATOMIC_SEQ_CST); }
INLINE void fetch_and(i64 *a, i64 i, i64 v) { __atomic_fetch_and(&a[i], v, __ATOMIC_SEQ_CST); }
INLINE i64 exchange(i64 *a, i64 i, i64 v) { return __atomic_exchange_n(&a[i], v, __ATOMIC_SEQ_CST); }
INLINE i64 cas(i64 *a, i64 i, i64 expected, i64 nv) {
  __atomic_compare_exchange_n(&a[i], &expected, nv, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;
}
INLINE i64 load_acquire(i64 *a, i64 i) { return __atomic_load_n(&a[i], __ATOMIC_ACQUIRE); }
INLINE void store_release(i64 *a, i64 i, i64 v) { __atomic_store_n(&a[i], v, __ATOMIC_RELEASE); }
/* atomics.store_release_lo32: the low half of a[i] (x86-64 is little-endian), the high half untouched */
INLINE void store_release_lo32(i64 *a, i64 i, i64 v) {
  __atomic_store_n((uint32_t *)&a[i], (uint32_t)v, __ATOMIC_RELEASE);
}
INLINE void cpu_relax(void) { _mm_pause(); }
INLINE i64 rdtsc(void) { return (i64)__rdtsc(); }
INLINE i64 lowest_bit(i64 x) { return __builtin_ctzll((u64)x); }
INLINE i64 bit64(i64 k) { return (i64)((u64)1 << k); }

#include "ticket_lock.h"

/* --- the random generator (kernels.py) ------------------------------------------------------ */
INLINE u64 next_rand(u64 *rng) {
  u64 x = rng[0];
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng[0] = x;
  return x * 0x2545F4914F6CDD1DULL;
}
INLINE i64 draw(u64 *rng, i64 n) { return (i64)(((next_rand(rng) >> 32) * (u64)n) >> 32); }
INLINE i64 draw_mfn(u64 *rng, const i64 *p) {
  i64 ws = p[P_WORKING_SET];
  if (p[P_WORKLOAD] == WL_HOT && p[P_HOT] > 0) {
    if (draw(rng, 10) != 0) return draw(rng, p[P_HOT] < ws ? p[P_HOT] : ws);
  }
  return draw(rng, ws);
}

/* --- tlb.py --------------------------------------------------------------------------------- */
static void spin_cycles(i64 cycles) {
  if (cycles <= 0) return;
  i64 t0 = rdtsc();
  while (rdtsc() - t0 < cycles) {}
}

INLINE i64 translate(struct arrays *a, i64 slot) {
  i64 *tlb = a->tlb, *srow = a->srow;
  const i64 *p = a->p;
  i64 ways = p[P_TLB_WAYS];
  i64 base = (slot & (p[P_TLB_SETS] - 1)) * ways;
  i64 meta = a->tlb_rows - 1;
  i64 tick = tlb[meta * T_COLS] + 1;
  tlb[meta * T_COLS] = tick;
  i64 victim = base;
  i64 oldest = (i64)1 << 62;
  for (i64 w = base; w < base + ways; w++) {
    i64 tag = tlb[w * T_COLS + T_TAG];
    if (tag == slot + 1) {
      tlb[w * T_COLS + T_AGE] = tick;
      srow[S_TLB_HITS] += 1;
      return tlb[w * T_COLS + T_PFN];
    }
    i64 age = tag == 0 ? -1 : tlb[w * T_COLS + T_AGE];
    if (age < oldest) {
      oldest = age;
      victim = w;
    }
  }
  srow[S_TLB_MISSES] += 1;
  if (p[P_COST_WALK] > 0) spin_cycles(p[P_COST_WALK]);
  i64 e = load_acquire(a->pte, slot);
  if ((e & PTE_PRESENT) == 0) return -1;
  i64 pfn = e & PTE_MFN_MASK;
  tlb[victim * T_COLS + T_TAG] = slot + 1;
  tlb[victim * T_COLS + T_PFN] = pfn;
  tlb[victim * T_COLS + T_AGE] = tick;
  return pfn;
}

/* tlb.peek: the frame an access would reach now, without a fill, an LRU tick, a counter or a cost. */
INLINE i64 peek(struct arrays *a, i64 slot) {
  const i64 *tlb = a->tlb, *p = a->p;
  i64 ways = p[P_TLB_WAYS];
  i64 base = (slot & (p[P_TLB_SETS] - 1)) * ways;
  for (i64 w = base; w < base + ways; w++)
    if (tlb[w * T_COLS + T_TAG] == slot + 1) return tlb[w * T_COLS + T_PFN];
  i64 e = load_acquire(a->pte, slot);
  if ((e & PTE_PRESENT) == 0) return -1;
  return e & PTE_MFN_MASK;
}

INLINE void flush_one(struct arrays *a, i64 slot) {
  i64 *tlb = a->tlb;
  const i64 *p = a->p;
  i64 ways = p[P_TLB_WAYS];
  i64 base = (slot & (p[P_TLB_SETS] - 1)) * ways;
  for (i64 w = base; w < base + ways; w++)
    if (tlb[w * T_COLS + T_TAG] == slot + 1) tlb[w * T_COLS + T_TAG] = 0;
  a->srow[S_FLUSH_ONE] += 1;
  if (p[P_COST_FLUSH_ONE] > 0) spin_cycles(p[P_COST_FLUSH_ONE]);
}

static i64 clock_now(i64 *dom) { return load_acquire(dom, D_TLBCLOCK); }

static i64 pre_flush(i64 *dom) {
  for (;;) {
    i64 t1 = load_acquire(dom, D_TLBCLOCK);
    if (t1 == 0) return 0;
    i64 t2 = (t1 + 1) & CLOCK_MASK;
    if (cas(dom, D_TLBCLOCK, t1, t2) == t1) {
      if (t2 == 0) cas(dom, D_TLBCLOCK, 0, 1);
      return t2;
    }
  }
}

static void flush_all(struct arrays *a) {
  i64 t = pre_flush(a->dom);
  i64 n = a->tlb_rows - 1;
  for (i64 w = 0; w < n; w++) a->tlb[w * T_COLS + T_TAG] = 0;
  a->vrow[V_TLBFLUSH_TIME] = t;
  a->srow[S_FLUSH_ALL] += 1;
  a->srow[S_REFILL_LEFT] = a->p[P_COST_REFILL];
  if (a->p[P_COST_FLUSH_ALL] > 0) spin_cycles(a->p[P_COST_FLUSH_ALL]);
}

/* tlb.touch_guest: the guest touching its own page through the TLB (tag GUEST_TAG + page). */
INLINE void touch_guest(struct arrays *a, i64 page) {
  i64 *tlb = a->tlb, *srow = a->srow;
  const i64 *p = a->p;
  i64 ways = p[P_TLB_WAYS];
  i64 base = (page & (p[P_TLB_SETS] - 1)) * ways;
  i64 tag = GUEST_TAG + page;
  i64 meta = a->tlb_rows - 1;
  i64 tick = tlb[meta * T_COLS] + 1;
  tlb[meta * T_COLS] = tick;
  i64 victim = base;
  i64 oldest = (i64)1 << 62;
  srow[S_GUEST_TOUCHES] += 1;
  for (i64 w = base; w < base + ways; w++) {
    i64 t = tlb[w * T_COLS + T_TAG];
    if (t == tag) {
      tlb[w * T_COLS + T_AGE] = tick;
      return;
    }
    i64 age = t == 0 ? -1 : tlb[w * T_COLS + T_AGE];
    if (age < oldest) {
      oldest = age;
      victim = w;
    }
  }
  srow[S_GUEST_WALKS] += 1;
  if (p[P_COST_WALK] > 0) spin_cycles(p[P_COST_WALK]);
  tlb[victim * T_COLS + T_TAG] = tag;
  tlb[victim * T_COLS + T_PFN] = page;
  tlb[victim * T_COLS + T_AGE] = tick;
}

/* tlb.refill */
static void refill(struct arrays *a) {
  a->srow[S_REFILL_LEFT] -= 1;
  a->srow[S_REFILLS] += 1;
  if (a->p[P_COST_WALK] > 0) spin_cycles(a->p[P_COST_WALK]);
}

static int need_flush(i64 cpu_stamp, i64 lastuse, i64 now) {
  if (now == 0) return 1;
  return cpu_stamp <= lastuse && lastuse <= now;
}

/* --- variants/locked.py --------------------------------------------------------------------- */
static i64 bitmap_words(i64 slots) { return (slots + 63) / 64; }
static i64 garbage_base(i64 slots) { return (bitmap_words(slots) + 7) / 8 * 8; }

/* locked.domain_words, lock_word, owner_words: the domain words of a layout */
INLINE void domain_words(i64 layout, i64 *cursor, i64 *epoch, i64 *ts) {
  int xen = layout == LAYOUT_XEN;
  *cursor = xen ? X_CURSOR : D_CURSOR;
  *epoch = xen ? X_EPOCH : D_EPOCH;
  *ts = xen ? X_TLBFLUSH_TS : D_TLBFLUSH_TS;
}

INLINE i64 lock_word(i64 layout, i64 kind) {
  if (layout == LAYOUT_XEN) return X_LOCK;
  if (kind == LOCK_MCS) return D_MCS_TAIL;
  if (kind == LOCK_TAS) return D_TAS;
  return D_LOCK_HEAD;
}

INLINE void owner_words(i64 layout, i64 *own, i64 *hts, i64 *hfrom) {
  int xen = layout == LAYOUT_XEN;
  *own = xen ? X_LOCK_OWNER : D_LOCK_OWNER;
  *hts = xen ? X_HANDOFF_TSC : D_HANDOFF_TSC;
  *hfrom = xen ? X_HANDOFF_FROM : D_HANDOFF_FROM;
}

static i64 mcs_node(i64 vcpu) { return D_MCS_NODES + 8 * vcpu; }

static void mcs_lock(i64 *dom, i64 *srow, i64 vcpu, i64 lw, i64 own) {
  i64 node = mcs_node(vcpu);
  srow[S_LOCK_ACQ] += 1;
  dom[node + N_NEXT] = 0;
  dom[node + N_LOCKED] = 1;
  i64 pred = exchange(dom, lw, vcpu + 1);
  if (pred != 0) {
    srow[S_LOCK_CONTENDED] += 1;
    i64 t0 = rdtsc();
    store_release(dom, mcs_node(pred - 1) + N_NEXT, vcpu + 1);
    while (load_acquire(dom, node + N_LOCKED) != 0) {
      cpu_relax();
      srow[S_PROGRESS] += 1;
    }
    srow[S_LOCK_SPIN] += rdtsc() - t0;
  } else {
    dom[node + N_LOCKED] = 0;
  }
  dom[own] = vcpu + 1;
}

static i64 mcs_successor(i64 *dom, i64 *srow, i64 vcpu, i64 lw) {
  i64 node = mcs_node(vcpu);
  i64 nxt = load_acquire(dom, node + N_NEXT);
  if (nxt == 0) {
    if (cas(dom, lw, vcpu + 1, 0) == vcpu + 1) return 0;
    while (nxt == 0) {
      cpu_relax();
      srow[S_PROGRESS] += 1;
      nxt = load_acquire(dom, node + N_NEXT);
    }
  }
  return nxt;
}

static int tas_try(i64 *dom, i64 lw) { return load_acquire(dom, lw) == 0 && exchange(dom, lw, 1) == 0; }

static void tas_lock(i64 *dom, i64 *srow, i64 vcpu, i64 lw, i64 own) {
  srow[S_LOCK_ACQ] += 1;
  if (!tas_try(dom, lw)) {
    srow[S_LOCK_CONTENDED] += 1;
    i64 t0 = rdtsc();
    fetch_add(dom, D_TAS_WAITERS, 1);
    i64 delay = 1;
    for (;;) {
      for (i64 k = 0; k < delay; k++) cpu_relax();
      srow[S_PROGRESS] += 1;
      if (tas_try(dom, lw)) break;
      delay = 2 * delay < TAS_BACKOFF_MAX ? 2 * delay : TAS_BACKOFF_MAX;
    }
    fetch_add(dom, D_TAS_WAITERS, -1);
    srow[S_LOCK_SPIN] += rdtsc() - t0;
  }
  dom[own] = vcpu + 1;
}

/* locked.acquire: the lock of kind `kind` in layout `layout`; a token for lk_release (the ticket). */
static i64 lk_acquire(i64 *dom, i64 *srow, i64 vcpu, i64 kind, i64 layout) {
  i64 lw = lock_word(layout, kind), own, hts, hfrom;
  owner_words(layout, &own, &hts, &hfrom);
  i64 my = 0;
  if (kind == LOCK_MCS) {
    mcs_lock(dom, srow, vcpu, lw, own);
  } else if (kind == LOCK_TAS) {
    tas_lock(dom, srow, vcpu, lw, own);
  } else if (layout == LAYOUT_XEN) {
    my = ticket_lock(&dom[lw], srow);
    dom[own] = vcpu + 1;
  } else {
    my = fetch_add(dom, lw + 1, 1);
    srow[S_LOCK_ACQ] += 1;
    if (load_acquire(dom, lw) != my) {
      srow[S_LOCK_CONTENDED] += 1;
      i64 t0 = rdtsc();
      while (load_acquire(dom, lw) != my) {
        cpu_relax();
        srow[S_PROGRESS] += 1;
      }
      srow[S_LOCK_SPIN] += rdtsc() - t0;
    }
    dom[own] = vcpu + 1;
  }
  i64 t_rel = dom[hts];
  if (t_rel != 0) {
    dom[hts] = 0;
    if (dom[hfrom] == vcpu + 1) {
      srow[S_LOCK_REACQ] += 1;
    } else {
      i64 dt = rdtsc() - t_rel;
      if (dt >= 0) {
        srow[S_HANDOFFS] += 1;
        srow[S_HANDOFF_CYCLES] += dt;
      }
    }
  }
  return my;
}

/* locked.release */
static void lk_release(i64 *dom, i64 my, i64 *srow, i64 t_hold, i64 vcpu, i64 kind, i64 layout) {
  i64 lw = lock_word(layout, kind), own, hts, hfrom;
  owner_words(layout, &own, &hts, &hfrom);
  if (t_hold != 0) {
    srow[S_LOCK_HOLD] += rdtsc() - t_hold;
    srow[S_LOCK_HOLD_SAMPLES] += 1;
  }
  if (kind == LOCK_MCS) {
    dom[own] = 0;
    i64 nxt = mcs_successor(dom, srow, vcpu, lw);
    if (nxt != 0) {
      dom[hfrom] = vcpu + 1;
      dom[hts] = rdtsc();
      store_release(dom, mcs_node(nxt - 1) + N_LOCKED, 0);
    }
  } else if (kind == LOCK_TAS) {
    dom[own] = 0;
    if (load_acquire(dom, D_TAS_WAITERS) > 0) {
      dom[hfrom] = vcpu + 1;
      dom[hts] = rdtsc();
    }
    store_release(dom, lw, 0);
  } else if (layout == LAYOUT_XEN) {
    if (ticket_waiters(&dom[lw], my)) {
      dom[hfrom] = vcpu + 1;
      dom[hts] = rdtsc();
    }
    dom[own] = 0;
    ticket_unlock(&dom[lw], my);
  } else {
    if (load_acquire(dom, lw + 1) != my + 1) {
      dom[hfrom] = vcpu + 1;
      dom[hts] = rdtsc();
    }
    dom[own] = 0;
    store_release(dom, lw, my + 1);
  }
}

/* Python's // and % on int64: floor division (the indices here are never negative). */
static i64 find_zero(i64 *dbits, i64 start, i64 slots) {
  i64 i = start;
  while (i < slots) {
    i64 w = load_acquire(dbits, i / 64);
    i64 free_ = ~(w >> (i % 64));          /* arithmetic shift of an int64, as numba's */
    if (free_ != 0) {
      i64 bit = lowest_bit(free_);
      if (i % 64 + bit < 64) {
        i64 j = i + bit;
        return j < slots ? j : slots;
      }
    }
    i = (i / 64 + 1) * 64;
  }
  return slots;
}

static void set_bit(i64 *dbits, i64 base, i64 idx) { fetch_or(dbits, base + idx / 64, bit64(idx % 64)); }

/* --- irq.py: what a variant calls; `irq` is a constant, 0 in the loop without interrupts ------ */
static void irq_take(struct arrays *a, i64 vcpu, i64 inside);
INLINE void irq_point(struct arrays *a, i64 vcpu, int irq) {
  if (irq && a->vrow[V_IRQ_PENDING] != 0) irq_take(a, vcpu, 1);
}
INLINE void irq_save(struct arrays *a, int irq, int on) {
  if (irq && on) a->vrow[V_IRQ_OFF] += 1;
}
INLINE void irq_restore(struct arrays *a, int irq, int on) {
  if (irq && on) a->vrow[V_IRQ_OFF] -= 1;
}

INLINE i64 locked_map_(struct arrays *a, i64 vcpu, i64 mfn, int irq) {
  const i64 *p = a->p;
  i64 *dom = a->dom, *pte = a->pte, *dbits = a->dbits, *vrow = a->vrow, *srow = a->srow;
  i64 h = p[P_HASH], slots = p[P_SLOTS], fault = p[P_FAULT];
  i64 hm = V_HASH, hi = V_HASH + h, hr = V_HASH + 2 * h;
  i64 b = mfn & (h - 1);
  if (vrow[hm + b] == mfn) {
    i64 r = vrow[hr + b] + 1;
    vrow[hr + b] = r;
    srow[S_HASH_HITS] += 1;
    if (r >= REFCNT_LIMIT) {
      srow[S_REFCNT_ERR] += 1;
      return -ST_REFCOUNT;
    }
    return MAPCACHE_VA + vrow[hi + b];
  }
  int nolock = (fault & LK_FAULT_NO_LOCK) != 0;
  i64 kind = p[P_LOCK];
  i64 layout = p[P_DOM_LAYOUT], d_cursor, d_epoch, d_tlbflush_ts;
  domain_words(layout, &d_cursor, &d_epoch, &d_tlbflush_ts);
  i64 my = 0;
  /* an NMI handler inside this CPU's own critical section: named, not spun on for ever */
  i64 own, hts, hfrom;
  owner_words(layout, &own, &hts, &hfrom);
  if (vrow[V_IRQ_OFF] != 0 && !nolock && dom[own] == vcpu + 1) {
    srow[S_DEADLOCKS] += 1;
    return -ST_DEADLOCK;
  }
  if (!nolock) my = lk_acquire(dom, srow, vcpu, kind, layout);
  i64 t_hold = srow[S_SAMPLING] != 0 ? rdtsc() : 0;
  irq_point(a, vcpu, irq);                                         /* lock held */
  i64 epoch = dom[d_epoch];
  if (epoch != vrow[V_SHADOW_EPOCH]) {
    vrow[V_SHADOW_EPOCH] = epoch;
    if ((fault & LK_FAULT_NO_EPOCH_FLUSH) == 0 &&
        need_flush(vrow[V_TLBFLUSH_TIME], dom[d_tlbflush_ts], clock_now(dom))) {
      flush_all(a);
      srow[S_EPOCH_FLUSH] += 1;
    }
  }
  i64 idx = find_zero(dbits, dom[d_cursor], slots);
  if (idx >= slots) {
    i64 gb = garbage_base(slots), nw = bitmap_words(slots), freed = 0;
    for (i64 i = 0; i < nw; i++) {
      i64 g = exchange(dbits, gb + i, 0);
      if (g != 0) {
        fetch_and(dbits, i, ~g);
        freed += 1;
      }
    }
    if (freed) srow[S_HARVEST] += 1;
    idx = find_zero(dbits, 0, slots);
    if (idx >= slots) {
      /* Replace one of this vCPU's idle hash entries, starting at the MFN's bucket. */
      i64 i = b;
      for (i64 k = 0; k < h; k++) {
        if (vrow[hi + i] != NOTINUSE && vrow[hr + i] == 0) {
          idx = vrow[hi + i];
          store_release(pte, idx, 0);
          vrow[hi + i] = NOTINUSE;
          vrow[hm + i] = NOTINUSE;
          break;
        }
        i = (i + 1) & (h - 1);
      }
    }
    if (idx >= slots) {
      srow[S_EXHAUSTED] += 1;
      if (!nolock) lk_release(dom, my, srow, t_hold, vcpu, kind, layout);
      return -ST_EXHAUSTED;
    }
    flush_all(a);
    epoch = dom[d_epoch] + 1;
    dom[d_epoch] = epoch;
    vrow[V_SHADOW_EPOCH] = epoch;
    dom[d_tlbflush_ts] = clock_now(dom);
  }
  set_bit(dbits, 0, idx);
  dom[d_cursor] = idx + 1;
  if (p[P_LONG_HOLD] > 0) spin_cycles(p[P_LONG_HOLD]);
  if (!nolock) lk_release(dom, my, srow, t_hold, vcpu, kind, layout);
  irq_point(a, vcpu, irq);                                         /* slot taken, PTE not yet written */
  store_release(pte, idx, mfn | PTE_PRESENT);
  return MAPCACHE_VA + idx;
}

/* local_irq_save around the whole of map and unmap, as in Xen */
INLINE i64 locked_map(struct arrays *a, i64 vcpu, i64 mfn, int irq) {
  irq_save(a, irq, 1);
  i64 va = locked_map_(a, vcpu, mfn, irq);
  irq_restore(a, irq, 1);
  return va;
}

INLINE i64 locked_unmap_(struct arrays *a, i64 vcpu, i64 va, int irq) {
  const i64 *p = a->p;
  i64 *pte = a->pte, *dbits = a->dbits, *vrow = a->vrow, *srow = a->srow;
  i64 h = p[P_HASH], slots = p[P_SLOTS];
  i64 hm = V_HASH, hi = V_HASH + h, hr = V_HASH + 2 * h;
  i64 idx = va - MAPCACHE_VA;
  if (idx < 0 || idx >= slots) return ST_BAD_VA;
  i64 e = pte[idx];
  if ((e & PTE_PRESENT) == 0) return ST_BAD_VA;
  i64 mfn = e & PTE_MFN_MASK;
  i64 b = mfn & (h - 1);
  i64 gb = garbage_base(slots);
  i64 fault = p[P_FAULT];
  int zap = (fault & LK_FAULT_GARBAGE_PTE) == 0;
  irq_point(a, vcpu, irq);                                         /* bucket not yet updated */
  if (vrow[hi + b] == idx) {
    i64 r = vrow[hr + b];
    if (r == 0) {
      srow[S_REFCNT_ERR] += 1;
      return ST_REFCOUNT;
    }
    vrow[hr + b] = r - 1;
  } else if (vrow[hr + b] == 0 || (fault & LK_FAULT_GARBAGE_HELD) != 0) {
    i64 old = vrow[hi + b];
    if (old != NOTINUSE) {
      if (zap) store_release(pte, old, 0);
      set_bit(dbits, gb, old);
    }
    vrow[hm + b] = mfn;
    vrow[hi + b] = idx;
  } else {
    if (zap) store_release(pte, idx, 0);
    set_bit(dbits, gb, idx);
  }
  return ST_OK;
}

INLINE i64 locked_unmap(struct arrays *a, i64 vcpu, i64 va, int irq) {
  irq_save(a, irq, 1);
  i64 st = locked_unmap_(a, vcpu, va, irq);
  irq_restore(a, irq, 1);
  return st;
}

/* --- variants/lockless.py ------------------------------------------------------------------- */
/* local_irq_save from entry to every return, as in the seed; lockless-noirqsave leaves it out */
INLINE i64 lockless_map(struct arrays *a, i64 vcpu, i64 mfn, int irq) {
  const i64 *p = a->p;
  i64 *vrow = a->vrow, *srow = a->srow;
  int save = (p[P_FAULT] & LL_FAULT_NO_IRQSAVE) == 0;
  irq_save(a, irq, save);
  i64 h = p[P_HASH], e = p[P_ENTRIES];
  i64 hm = V_RESERVED, hi = hm + h, rc = hm + 2 * h, iu = hm + 2 * h + e;
  i64 base = vcpu * e;
  i64 b = hm + (mfn & (h - 1));
  i64 old = vrow[hi - hm + b];
  i64 idx;
  if (vrow[b] != mfn) {
    idx = -1;
    for (i64 w = 0; w < (e + 63) / 64; w++) {
      i64 free_ = ~vrow[iu + w];
      if (free_ != 0) {
        i64 bit = lowest_bit(free_);
        if (w * 64 + bit < e) idx = w * 64 + bit;
        break;
      }
    }
    if (idx < 0) {
      srow[S_EXHAUSTED] += 1;
      irq_restore(a, irq, save);
      return -ST_EXHAUSTED;
    }
    irq_point(a, vcpu, irq);                                       /* slot chosen, not yet marked */
    vrow[iu + idx / 64] |= bit64(idx % 64);
    irq_point(a, vcpu, irq);                                       /* marked, PTE not yet written */
    store_release(a->pte, base + idx, mfn | PTE_PRESENT);
    if (p[P_LONG_HOLD] > 0) spin_cycles(p[P_LONG_HOLD]);
    if ((p[P_FAULT] & LL_FAULT_NO_FLUSH) == 0) flush_one(a, base + idx);
    irq_point(a, vcpu, irq);                                       /* PTE written, bucket not yet updated */
    /* LL_FAULT_FREE_HELD: free it at refcount 1, while a mapping still holds it */
    if (old >= 0 && vrow[rc + old] <= ((p[P_FAULT] & LL_FAULT_FREE_HELD) >> 1)) vrow[iu + old / 64] &= ~bit64(old % 64);
    vrow[b] = mfn;
    vrow[hi - hm + b] = idx;
  } else {
    idx = old;
    srow[S_HASH_HITS] += 1;
  }
  irq_point(a, vcpu, irq);                                         /* slot known, refcount not yet raised */
  i64 r = (vrow[rc + idx] + 1) & REFCNT_MASK;
  vrow[rc + idx] = r;
  irq_restore(a, irq, save);
  if (r == 0 && p[P_REFCOUNT_WRAP] == 0) {
    srow[S_REFCNT_ERR] += 1;
    return -ST_REFCOUNT;
  }
  return MAPCACHE_VA + base + idx;
}

INLINE i64 lockless_unmap(struct arrays *a, i64 vcpu, i64 va, int irq) {
  const i64 *p = a->p;
  i64 *vrow = a->vrow, *srow = a->srow;
  i64 h = p[P_HASH], e = p[P_ENTRIES];
  i64 hm = V_RESERVED, rc = hm + 2 * h, iu = hm + 2 * h + e;
  i64 base = vcpu * e;
  i64 idx = va - MAPCACHE_VA - base;
  if (idx < 0 || idx >= e) return ST_BAD_VA;
  int save = (p[P_FAULT] & LL_FAULT_NO_IRQSAVE) == 0;
  irq_save(a, irq, save);
  i64 mfn = a->pte[base + idx] & PTE_MFN_MASK;
  i64 r = vrow[rc + idx];
  if (r == 0 && p[P_REFCOUNT_WRAP] == 0) {
    srow[S_REFCNT_ERR] += 1;
    irq_restore(a, irq, save);
    return ST_REFCOUNT;
  }
  r = (r - 1) & REFCNT_MASK;
  vrow[rc + idx] = r;
  irq_point(a, vcpu, irq);                                         /* refcount lowered, slot not yet freed */
  if (vrow[hm + (mfn & (h - 1))] != mfn && r == 0) vrow[iu + idx / 64] &= ~bit64(idx % 64);
  irq_restore(a, irq, save);
  return ST_OK;
}

/* --- variants/percpu.py --------------------------------------------------------------------- */
INLINE i64 pc_find_zero(const i64 *vrow, i64 iu, i64 start, i64 e) {
  i64 i = start;
  while (i < e) {
    i64 free_ = ~(vrow[iu + i / 64] >> (i % 64));
    if (free_ != 0) {
      i64 bit = lowest_bit(free_);
      if (i % 64 + bit < 64) return i + bit < e ? i + bit : e;
    }
    i = (i / 64 + 1) * 64;
  }
  return e;
}

INLINE i64 percpu_map(struct arrays *a, i64 vcpu, i64 mfn, int irq) {
  const i64 *p = a->p;
  i64 *vrow = a->vrow, *srow = a->srow, *pte = a->pte;
  irq_save(a, irq, 1);
  i64 h = p[P_HASH], e = p[P_ENTRIES];
  i64 w = (e + 63) / 64;
  i64 hm = PC_V_HASH, hi = hm + h, hr = hm + 2 * h, iu = hm + 3 * h, gb = iu + w;
  i64 base = vcpu * e;
  i64 b = mfn & (h - 1);
  if (vrow[hm + b] == mfn) {
    i64 r = vrow[hr + b] + 1;
    vrow[hr + b] = r;
    srow[S_HASH_HITS] += 1;
    irq_restore(a, irq, 1);
    if (r >= REFCNT_LIMIT) {
      srow[S_REFCNT_ERR] += 1;
      return -ST_REFCOUNT;
    }
    return MAPCACHE_VA + base + vrow[hi + b];
  }
  i64 idx = pc_find_zero(vrow, iu, vrow[PC_V_CURSOR], e);
  irq_point(a, vcpu, irq);                                         /* slot chosen, not yet marked */
  if (idx >= e) {
    i64 freed = 0;
    for (i64 k = 0; k < w; k++) {
      i64 g = vrow[gb + k];
      if (g != 0) {
        vrow[iu + k] &= ~g;
        vrow[gb + k] = 0;
        freed += 1;
      }
    }
    if (freed) srow[S_HARVEST] += 1;
    idx = pc_find_zero(vrow, iu, 0, e);
    if (idx >= e) {
      /* Take one of this vCPU's idle hash entries, starting at the MFN's bucket. */
      i64 i = b;
      for (i64 k = 0; k < h; k++) {
        if (vrow[hi + i] != NOTINUSE && vrow[hr + i] == 0) {
          idx = vrow[hi + i];
          store_release(pte, base + idx, 0);
          vrow[hi + i] = NOTINUSE;
          vrow[hm + i] = NOTINUSE;
          break;
        }
        i = (i + 1) & (h - 1);
      }
    }
    if (idx >= e) {
      srow[S_EXHAUSTED] += 1;
      irq_restore(a, irq, 1);
      return -ST_EXHAUSTED;
    }
    if ((p[P_FAULT] & PC_FAULT_NO_FLUSH) == 0) flush_all(a);
  }
  vrow[iu + idx / 64] |= bit64(idx % 64);
  vrow[PC_V_CURSOR] = idx + 1;
  irq_point(a, vcpu, irq);                                         /* slot marked, PTE not yet written */
  store_release(pte, base + idx, mfn | PTE_PRESENT);
  if (p[P_LONG_HOLD] > 0) spin_cycles(p[P_LONG_HOLD]);
  irq_restore(a, irq, 1);
  return MAPCACHE_VA + base + idx;
}

INLINE void pc_retire(i64 *vrow, i64 *pte, i64 base, i64 gb, i64 iu, i64 idx, int eager) {
  store_release(pte, base + idx, 0);
  if (eager)
    vrow[iu + idx / 64] &= ~bit64(idx % 64);
  else
    vrow[gb + idx / 64] |= bit64(idx % 64);
}

INLINE i64 percpu_unmap(struct arrays *a, i64 vcpu, i64 va, int irq) {
  const i64 *p = a->p;
  i64 *vrow = a->vrow, *srow = a->srow, *pte = a->pte;
  irq_save(a, irq, 1);
  i64 h = p[P_HASH], e = p[P_ENTRIES];
  i64 w = (e + 63) / 64;
  i64 hm = PC_V_HASH, hi = hm + h, hr = hm + 2 * h, iu = hm + 3 * h, gb = iu + w;
  i64 base = vcpu * e;
  i64 idx = va - MAPCACHE_VA - base;
  if (idx < 0 || idx >= e) {
    irq_restore(a, irq, 1);
    return ST_BAD_VA;
  }
  i64 ent = pte[base + idx];
  if ((ent & PTE_PRESENT) == 0) {
    irq_restore(a, irq, 1);
    return ST_BAD_VA;
  }
  i64 mfn = ent & PTE_MFN_MASK;
  i64 b = mfn & (h - 1);
  int eager = (p[P_FAULT] & PC_FAULT_EAGER_REUSE) != 0;
  irq_point(a, vcpu, irq);                                         /* bucket not yet updated */
  if (vrow[hi + b] == idx) {
    i64 r = vrow[hr + b];
    if (r == 0) {
      srow[S_REFCNT_ERR] += 1;
      irq_restore(a, irq, 1);
      return ST_REFCOUNT;
    }
    vrow[hr + b] = r - 1;
  } else if (vrow[hr + b] == 0) {
    i64 old = vrow[hi + b];
    if (old != NOTINUSE) pc_retire(vrow, pte, base, gb, iu, old, eager);
    vrow[hm + b] = mfn;
    vrow[hi + b] = idx;
  } else {
    pc_retire(vrow, pte, base, gb, iu, idx, eager);
  }
  irq_restore(a, irq, 1);
  return ST_OK;
}

/* --- variants/kmap_local.py ----------------------------------------------------------------- */
INLINE i64 kmap_local_map(struct arrays *a, i64 vcpu, i64 mfn, int irq) {
  const i64 *p = a->p;
  i64 *vrow = a->vrow, *srow = a->srow, *pte = a->pte;
  i64 e = p[P_ENTRIES];
  i64 top = vrow[KM_V_TOP];
  if (top >= e) {
    srow[S_EXHAUSTED] += 1;
    return -ST_EXHAUSTED;
  }
  i64 slot = vcpu * e + top;
  vrow[KM_V_TOP] = top + 1;
  irq_point(a, vcpu, irq);                                         /* pushed, PTE not yet written */
  if ((pte[slot] & PTE_PRESENT) != 0) srow[S_INVARIANT] += 1;     /* BUG_ON(!pte_none(...)) */
  store_release(pte, slot, mfn | PTE_PRESENT);
  irq_point(a, vcpu, irq);                                         /* mapped, not yet returned */
  if (p[P_LONG_HOLD] > 0) spin_cycles(p[P_LONG_HOLD]);
  return MAPCACHE_VA + slot;
}

INLINE i64 kmap_local_unmap(struct arrays *a, i64 vcpu, i64 va, int irq) {
  const i64 *p = a->p;
  i64 *vrow = a->vrow, *pte = a->pte;
  i64 e = p[P_ENTRIES];
  i64 slot = va - MAPCACHE_VA;
  i64 idx = slot - vcpu * e;
  if (idx < 0 || idx >= e || (pte[slot] & PTE_PRESENT) == 0) return ST_BAD_VA;
  i64 top = vrow[KM_V_TOP];
  if (idx != top - 1) return ST_ORDER;
  store_release(pte, slot, 0);
  irq_point(a, vcpu, irq);                                         /* PTE cleared, not yet flushed */
  if ((p[P_FAULT] & KM_FAULT_NO_FLUSH) == 0) flush_one(a, slot);
  irq_point(a, vcpu, irq);                                         /* flushed, not yet popped */
  vrow[KM_V_TOP] = top - 1;
  return ST_OK;
}

/* --- a Xen tree's own domain_page.c (testbed/xen.py builds it with -DTESTBED_XEN) ------------- */
#ifdef TESTBED_XEN
/* Defined after the Xen file, in csrc/xen/glue.c: its map_domain_page / unmap_domain_page on
 * the shim's Xen, with the port's arrays. VID_XEN is the registry's variants.xen.VID. */
#define VID_XEN 64
static i64 xen_map(struct arrays *a, i64 vcpu, i64 mfn, int irq);
static i64 xen_unmap(struct arrays *a, i64 vcpu, i64 va, int irq);
#endif

/* --- kernels.py: dispatch, timed map, access, the loop -------------------------------------- */
INLINE i64 map_page(struct arrays *a, i64 vid, i64 vcpu, i64 mfn, int irq) {
#ifdef TESTBED_XEN
  if (vid == VID_XEN) return xen_map(a, vcpu, mfn, irq);
#endif
  if (vid == VID_DIRECTMAP) return mfn;
  if (vid == VID_LOCKED) return locked_map(a, vcpu, mfn, irq);
  if (vid == VID_LOCKLESS) return lockless_map(a, vcpu, mfn, irq);
  if (vid == VID_PERCPU) return percpu_map(a, vcpu, mfn, irq);
  if (vid == VID_KMAP_LOCAL) return kmap_local_map(a, vcpu, mfn, irq);
  return -ST_BAD_VARIANT;
}

INLINE i64 unmap_page(struct arrays *a, i64 vid, i64 vcpu, i64 va, int irq) {
#ifdef TESTBED_XEN
  if (vid == VID_XEN) return xen_unmap(a, vcpu, va, irq);
#endif
  if (vid == VID_DIRECTMAP) return ST_OK;
  if (vid == VID_LOCKED) return locked_unmap(a, vcpu, va, irq);
  if (vid == VID_LOCKLESS) return lockless_unmap(a, vcpu, va, irq);
  if (vid == VID_PERCPU) return percpu_unmap(a, vcpu, va, irq);
  if (vid == VID_KMAP_LOCAL) return kmap_local_unmap(a, vcpu, va, irq);
  return ST_BAD_VARIANT;
}

static i64 log2_bin(i64 x) {
  i64 b = 0;
  while (x > 1 && b < LAT_BINS - 1) {
    x >>= 1;
    b += 1;
  }
  return b;
}

INLINE i64 timed_map(struct arrays *a, i64 vid, i64 vcpu, i64 mfn, int irq) {
  i64 *srow = a->srow;
  i64 n = srow[S_MAPS];
  srow[S_MAPS] = n + 1;
  int sampled = (n & (((i64)1 << a->p[P_LAT_EVERY]) - 1)) == 0;
  i64 t0 = 0;
  if (sampled) {
    srow[S_SAMPLING] = 1;
    t0 = rdtsc();
  }
  i64 va = map_page(a, vid, vcpu, mfn, irq);
  if (sampled) {
    srow[S_SAMPLING] = 0;
    i64 dt = rdtsc() - t0;
    a->hrow[log2_bin(dt)] += 1;
    srow[S_LAT_SAMPLES] += 1;
    srow[S_LAT_CYCLES] += dt;
    if (dt > srow[S_LAT_MAX]) srow[S_LAT_MAX] = dt;
  }
  return va;
}

INLINE void access_frame(struct arrays *a, i64 vcpu, i64 va, i64 mfn) {
  i64 *srow = a->srow;
  i64 pfn;
  if (srow[S_REFILL_LEFT] > 0) refill(a);
  if (va >= MAPCACHE_VA)
    pfn = translate(a, va - MAPCACHE_VA);
  else
    pfn = va;
  if (pfn < 0 || pfn >= a->p[P_FRAMES]) {
    srow[S_STALE] += 1;
  } else {
    if (a->frames[pfn * a->fw] != mfn) srow[S_STALE] += 1;
    a->frames[pfn * a->fw + FRAME_HDR + 8 * vcpu] += 1;          /* counter_col(vcpu) */
  }
  a->erow[mfn] += 1;
  srow[S_WRITES] += 1;
}

/* kernels.recheck: the oracle on a held mapping just before its unmap. */
INLINE void recheck(struct arrays *a, i64 va, i64 mfn) {
  i64 *srow = a->srow;
  if (va >= MAPCACHE_VA) {
    srow[S_RECHECKS] += 1;
    i64 slot = va - MAPCACHE_VA;
    if (load_acquire(a->pte, slot) != (mfn | PTE_PRESENT)) srow[S_HELD_PTE] += 1;
    i64 pfn = peek(a, slot);
    if (pfn < 0 || pfn >= a->p[P_FRAMES] || a->frames[pfn * a->fw] != mfn) srow[S_HELD_STALE] += 1;
  }
}

/* --- kernels.py: simulated interrupts ------------------------------------------------------- */
INLINE i64 irq_rand(i64 *vrow, i64 n) {
  u64 x = (u64)vrow[V_IRQ_RNG];
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  vrow[V_IRQ_RNG] = (i64)x;
  return (i64)((((x * 0x2545F4914F6CDD1DULL) >> 32) * (u64)n) >> 32);
}

static void irq_due(const i64 *p, i64 *vrow) {
  i64 now = rdtsc(), nxt = vrow[V_IRQ_NEXT], gap = p[P_IRQ_INTERVAL];
  if (nxt == 0) {
    vrow[V_IRQ_NEXT] = now + (gap >> 16) * irq_rand(vrow, 1 << 16);
  } else if (now >= nxt && vrow[V_IRQ_PENDING] == 0) {
    vrow[V_IRQ_PENDING] = 1 + irq_rand(vrow, IRQ_SPAN);
    vrow[V_IRQ_NEXT] = now + gap / 2 + (gap >> 16) * irq_rand(vrow, 1 << 16);
  }
}

/* The handler: its map and unmap run with irq = 0 (no arrival points), on the run-time id. */
static void irq_take(struct arrays *a, i64 vcpu, i64 inside) {
  i64 *vrow = a->vrow, *srow = a->srow;
  i64 n = vrow[V_IRQ_PENDING];
  if (n > 1) {
    vrow[V_IRQ_PENDING] = n - 1;
    return;
  }
  int off = vrow[V_IRQ_OFF] != 0;
  if (off && a->p[P_NMI] == 0) {
    if (n == 1) {
      srow[S_IRQ_DEFERRED] += 1;
      vrow[V_IRQ_PENDING] = -1;
    }
    return;
  }
  vrow[V_IRQ_PENDING] = 0;
  srow[S_IRQ_TAKEN] += 1;
  if (inside) {
    srow[S_IRQ_INSIDE] += 1;
    if (off) srow[S_NMI_IRQS_OFF] += 1;
  }
  vrow[V_IRQ_OFF] += 1;
  i64 vid = a->p[P_VARIANT];
  i64 mfn = irq_rand(vrow, a->p[P_WORKING_SET]);
  i64 va = map_page(a, vid, vcpu, mfn, 0);
  if (va < 0) {
    if (vrow[V_IRQ_STATUS] == ST_OK) vrow[V_IRQ_STATUS] = -va;
  } else {
    srow[S_IRQ_MAPS] += 1;
    access_frame(a, vcpu, va, mfn);
    i64 st = unmap_page(a, vid, vcpu, va, 0);
    if (st != ST_OK && vrow[V_IRQ_STATUS] == ST_OK) {
      if (st == ST_BAD_VA) srow[S_INVARIANT] += 1;
      vrow[V_IRQ_STATUS] = st;
    }
  }
  vrow[V_IRQ_OFF] -= 1;
}

INLINE void loop_point(struct arrays *a, i64 vcpu, int irq) {
  if (irq && a->vrow[V_IRQ_PENDING] != 0) irq_take(a, vcpu, 0);
}

/* --- kernels.py: exposure ------------------------------------------------------------------ */
INLINE int reachable(struct arrays *a, i64 slot, i64 mfn) {
  const i64 *tlb = a->tlb, *p = a->p;
  if (load_acquire(a->pte, slot) == (mfn | PTE_PRESENT)) return 1;
  i64 ways = p[P_TLB_WAYS];
  i64 base = (slot & (p[P_TLB_SETS] - 1)) * ways;
  for (i64 w = base; w < base + ways; w++)
    if (tlb[w * T_COLS + T_TAG] == slot + 1 && tlb[w * T_COLS + T_PFN] == mfn) return 1;
  return 0;
}

static i64 reachable_frames(struct arrays *a) {
  i64 n = 0, slots = a->p[P_SLOTS];
  for (i64 s = 0; s < slots; s++)
    if ((load_acquire(a->pte, s) & PTE_PRESENT) != 0) n += 1;
  for (i64 w = 0; w < a->tlb_rows - 1; w++) {
    i64 tag = a->tlb[w * T_COLS + T_TAG];
    if (0 < tag && tag <= slots && load_acquire(a->pte, tag - 1) != (a->tlb[w * T_COLS + T_PFN] | PTE_PRESENT)) n += 1;
  }
  return n;
}

static void exposed(i64 *srow, i64 cycles, i64 ops) {
  srow[S_EXP_SAMPLES] += 1;
  srow[S_EXP_CYCLES] += cycles;
  srow[S_EXP_OPS] += ops;
  if (cycles > srow[S_EXP_MAX_CYCLES]) srow[S_EXP_MAX_CYCLES] = cycles;
  if (ops > srow[S_EXP_MAX_OPS]) srow[S_EXP_MAX_OPS] = ops;
}

/* kernels.expose: at a look, follow one unmapped frame until it is unreachable. */
static void expose(struct arrays *a, i64 now, i64 ops) {
  i64 *srow = a->srow, *lrow = a->lrow;
  i64 s = srow[S_EXP_SLOT];
  if (s != 0) {
    if (reachable(a, s - 1, srow[S_EXP_MFN])) return;
    srow[S_EXP_SLOT] = 0;
    exposed(srow, now - srow[S_EXP_T0], ops - srow[S_EXP_OP0]);
    return;
  }
  i64 va = lrow[0];
  if (va < MAPCACHE_VA) return;
  i64 slot = va - MAPCACHE_VA;
  if ((srow[S_EXP_SAMPLES] & (((i64)1 << a->p[P_LAT_EVERY]) - 1)) == 0) {
    srow[S_EXP_INSTANTS] += 1;
    srow[S_EXP_REACHABLE] += reachable_frames(a);
  }
  if (reachable(a, slot, lrow[1])) {
    srow[S_EXP_SLOT] = slot + 1;
    srow[S_EXP_MFN] = lrow[1];
    srow[S_EXP_T0] = now;
    srow[S_EXP_OP0] = ops;
  } else {
    exposed(srow, 0, 0);
  }
}

/* kernels.guest_pages */
static void guest_pages(struct arrays *a) {
  for (i64 g = 0; g < a->p[P_GUEST_PAGES]; g++) touch_guest(a, g);
}

static int held_mfn(const i64 *lrow, i64 k, i64 mfn) {
  for (i64 j = 0; j < k; j++)
    if (lrow[2 * j + 1] == mfn) return 1;
  return 0;
}

static void arm_timer(const i64 *p, i64 *srow, i64 deadline) {
  i64 now = rdtsc();
  srow[S_TIMER_SETS] += 1;
  srow[S_TIMER_CYCLES] += now - (deadline - p[P_SLACK]);
  if (now > deadline) srow[S_TIMER_LATE] += 1;
  if (now <= deadline || p[P_SSHOT_FUTURE] == 0) {  /* Xen >= 4.18 ignores VCPU_SSHOTTMR_future */
    srow[S_STREAK] = 0;
    return;
  }
  srow[S_ETIME] += 1;
  i64 streak = srow[S_STREAK] + 1;
  if (streak > srow[S_STREAK_MAX]) srow[S_STREAK_MAX] = streak;
  if (streak >= p[P_PANIC_STREAK]) {
    srow[S_PANICS] += 1;
    streak = 0;
  }
  srow[S_STREAK] = streak;
}

static void guest_work(const i64 *p, u64 *rng, i64 *srow) {
  u64 x = rng[0];
  for (i64 k = 0; k < p[P_GUEST_WORK]; k++) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
  }
  rng[0] = x;
  srow[S_WORK] += 1;
}

/* kernels.ops_loop: the loop under variant `vid`. Inlined with a constant id into one
 * function per variant (as kernels.run_ops picks the variant's own compiled loop), so the
 * compiler folds the dispatch and lays out each design's loop alone. */
INLINE i64 ops_loop(i64 vid, int irq, i64 n, i64 vcpu, struct arrays A) {
  struct arrays *a = &A;                 /* a local copy: no store through an array can change it */
  const i64 *p = a->p;
  u64 *rng = a->rng;
  i64 *srow = a->srow, *lrow = a->lrow;
  i64 wl = p[P_WORKLOAD];
  int same = wl == WL_NEST_SAME;
  i64 nest = wl == WL_PTWALK || same ? p[P_NEST] : 1;
  i64 below = same ? p[P_LEVELS] : 0;
  int others = same && p[P_WORKING_SET] > below;
  int distinct = wl == WL_PTWALK && p[P_WORKING_SET] >= nest;
  int recursive = wl == WL_PTWALK && p[P_RECURSIVE] > 0;
  int hypercall = wl == WL_GUEST || wl == WL_TIMERS;
  i64 burst = hypercall ? p[P_BURST] : 1;
  i64 done = 0, status = ST_OK;
  i64 budget = p[P_CHUNK_CYCLES];
  i64 check_mask = hypercall || p[P_CHECK_EVERY_OP] != 0 ? 0 : 15;
  i64 t_chunk = rdtsc();
  for (i64 it = 0; it < n; it++) {
    if ((done & check_mask) == check_mask) {
      i64 now = rdtsc();
      if (now - t_chunk > budget) break;
      expose(a, now, srow[S_OPS] + done);
    }
    if (hypercall && srow[S_STREAK] == 0) {
      guest_work(p, rng, srow);
      guest_pages(a);
    }
    if (irq && p[P_IRQ_INTERVAL] > 0) irq_due(p, a->vrow);
    i64 deadline = wl == WL_TIMERS ? rdtsc() + p[P_SLACK] : 0;
    for (i64 bi = 0; bi < burst; bi++) {
      i64 depth = wl != WL_PTWALK ? nest + below : 1 + draw(rng, nest);
      i64 held = 0;
      for (i64 k = 0; k < depth; k++) {
        i64 mfn;
        int again = recursive && k > 0 && draw(rng, 1 << 16) < p[P_RECURSIVE];
        if (again)
          mfn = lrow[2 * draw(rng, k) + 1];         /* the table an earlier level mapped, again */
        else if (same && 0 < k && k < nest)
          mfn = lrow[1];
        else
          mfn = draw_mfn(rng, p);
        if (!again && (distinct || (others && k >= nest)))
          while (held_mfn(lrow, k, mfn)) mfn = draw_mfn(rng, p);
        loop_point(a, vcpu, irq);
        i64 va = timed_map(a, vid, vcpu, mfn, irq);
        if (va < 0) {
          status = -va;
          break;
        }
        lrow[2 * k] = va;
        lrow[2 * k + 1] = mfn;
        held = k + 1;
        loop_point(a, vcpu, irq);
        access_frame(a, vcpu, va, mfn);
      }
      srow[S_LIVE] = held;
      if (status != ST_OK) break;
      for (i64 k = held - 1; k >= 0; k--) {
        loop_point(a, vcpu, irq);
        recheck(a, lrow[2 * k], lrow[2 * k + 1]);
        i64 st = unmap_page(a, vid, vcpu, lrow[2 * k], irq);
        if (st != ST_OK) {
          if (st == ST_BAD_VA) srow[S_INVARIANT] += 1;
          status = st;
          break;
        }
        srow[S_LIVE] = k;
      }
      if (status != ST_OK) break;
    }
    if (irq && status == ST_OK && a->vrow[V_IRQ_STATUS] != ST_OK) status = a->vrow[V_IRQ_STATUS];
    if (status != ST_OK) break;
    if (wl == WL_TIMERS) arm_timer(p, srow, deadline);
    done += 1;
    srow[S_PROGRESS] += 1;
  }
  srow[S_OPS] += done;
  return status;
}

/* ... and once more per variant with interrupts (irq = 1), as kernels.loop picks the interrupt
 * loop when p[P_IRQ_INTERVAL] is not 0. */
#define LOOP(name, vid, irq) \
  static __attribute__((noinline)) i64 name(i64 n, i64 vcpu, struct arrays A) { return ops_loop(vid, irq, n, vcpu, A); }
LOOP(loop_directmap, VID_DIRECTMAP, 0)
LOOP(loop_locked, VID_LOCKED, 0)
LOOP(loop_lockless, VID_LOCKLESS, 0)
LOOP(loop_percpu, VID_PERCPU, 0)
LOOP(loop_kmap_local, VID_KMAP_LOCAL, 0)
LOOP(loop_any, A.p[P_VARIANT], 0)
LOOP(loop_directmap_irq, VID_DIRECTMAP, 1)
LOOP(loop_locked_irq, VID_LOCKED, 1)
LOOP(loop_lockless_irq, VID_LOCKLESS, 1)
LOOP(loop_percpu_irq, VID_PERCPU, 1)
LOOP(loop_kmap_local_irq, VID_KMAP_LOCAL, 1)
LOOP(loop_any_irq, A.p[P_VARIANT], 1)
#ifdef TESTBED_XEN
LOOP(loop_xen, VID_XEN, 0)
LOOP(loop_xen_irq, VID_XEN, 1)
#endif

/* kernels.run_ops. Each 2-D array comes as its base pointer and its row stride in words;
 * tlb_rows is the TLB's entry count plus one (the last entry's first word is the LRU tick). */
i64 testbed_run_ops(i64 n, i64 vcpu, const i64 *p, i64 *dom, i64 *pte, i64 *dbits, i64 *vst, i64 vst_stride,
                    i64 *frames, i64 frames_stride, i64 *expect, i64 expect_stride, i64 *stats,
                    i64 stats_stride, i64 *hist, i64 hist_stride, i64 *live, i64 live_stride, i64 *tlb,
                    i64 tlb_rows, u64 *rng) {
  struct arrays A = {
      .p = p, .dom = dom, .pte = pte, .dbits = dbits, .tlb = tlb, .frames = frames,
      .erow = expect + vcpu * expect_stride, .srow = stats + vcpu * stats_stride,
      .vrow = vst + vcpu * vst_stride, .hrow = hist + vcpu * hist_stride, .lrow = live + vcpu * live_stride,
      .rng = rng, .fw = frames_stride, .tlb_rows = tlb_rows,
  };
#ifdef TESTBED_XEN
  if (p[P_VARIANT] == VID_XEN) return p[P_IRQ_INTERVAL] != 0 ? loop_xen_irq(n, vcpu, A) : loop_xen(n, vcpu, A);
#endif
  if (p[P_IRQ_INTERVAL] != 0) {
    switch (p[P_VARIANT]) {
      case VID_DIRECTMAP: return loop_directmap_irq(n, vcpu, A);
      case VID_LOCKED: return loop_locked_irq(n, vcpu, A);
      case VID_LOCKLESS: return loop_lockless_irq(n, vcpu, A);
      case VID_PERCPU: return loop_percpu_irq(n, vcpu, A);
      case VID_KMAP_LOCAL: return loop_kmap_local_irq(n, vcpu, A);
      default: return loop_any_irq(n, vcpu, A);
    }
  }
  switch (p[P_VARIANT]) {
    case VID_DIRECTMAP: return loop_directmap(n, vcpu, A);
    case VID_LOCKED: return loop_locked(n, vcpu, A);
    case VID_LOCKLESS: return loop_lockless(n, vcpu, A);
    case VID_PERCPU: return loop_percpu(n, vcpu, A);
    case VID_KMAP_LOCAL: return loop_kmap_local(n, vcpu, A);
    default: return loop_any(n, vcpu, A);
  }
}
