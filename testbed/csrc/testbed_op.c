/* testbed_op.c: the operation loop of testbed.kernels.run_ops, in C.
 *
 * The yardstick for the compiled loop: what the same work costs without numba. It is a
 * line-by-line port of run_ops and everything it calls (kernels.py, tlb.py, atomics.py, the
 * simulated interrupts of irq.py, every workload), and it runs on the very arrays the harness
 * lays out (testbed.native passes their addresses and row strides), so over the same seed and
 * operation count it leaves the same counters, frames, expect rows, TLB and mapcache state as
 * the compiled loop (tests/test_native.py checks this). Counters that measure time (cycle
 * sums, the latency histogram's bins) differ, as they do between two runs of the compiled loop.
 *
 * The designs are not in this file: each design's map and unmap, fault bits of its negative
 * controls included, is csrc/variants/<module>.h (the spinlocks a design takes, locks.h), and
 * the table that lists them (ids, names, the includes) is testbed_designs.h, which
 * testbed.native writes from the registry (variants/__init__.py TABLE, n-th distinct module =
 * id n) next to the build; nothing here names a design. The dispatch, the loops of each
 * design and run_ops' switch expand TESTBED_DESIGNS(X), X(module, id) per design.
 *
 * Keep it in step with the kernels: a change to run_ops or to a design's map / unmap changes
 * the C in the same commit, or the equality test fails.
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
#include "locks.h"

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

/* --- the designs: generated from the registry by testbed.native (designs_header) -------- */
/* Each design's map and unmap (csrc/variants/<module>.h), TESTBED_DESIGNS(X) listing them as
 * X(module, id), and testbed_variants naming the ids; a native kind (xen) adds its entry under
 * its own build flag, its C being the user's tree. */
#include "testbed_designs.h"

/* --- kernels.py: dispatch, timed map, access, the loop -------------------------------------- */
#define MAP_CASE(name, id) if (vid == (id)) return name##_map(a, vcpu, mfn, irq);
#define UNMAP_CASE(name, id) if (vid == (id)) return name##_unmap(a, vcpu, va, irq);
INLINE i64 map_page(struct arrays *a, i64 vid, i64 vcpu, i64 mfn, int irq) {
  TESTBED_DESIGNS(MAP_CASE)
  return -ST_BAD_VARIANT;
}

INLINE i64 unmap_page(struct arrays *a, i64 vid, i64 vcpu, i64 va, int irq) {
  TESTBED_DESIGNS(UNMAP_CASE)
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
#define LOOP_OF(name, id) LOOP(loop_##name, id, 0)
#define LOOP_IRQ_OF(name, id) LOOP(loop_##name##_irq, id, 1)
TESTBED_DESIGNS(LOOP_OF)
LOOP(loop_any, A.p[P_VARIANT], 0)
TESTBED_DESIGNS(LOOP_IRQ_OF)
LOOP(loop_any_irq, A.p[P_VARIANT], 1)

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
#define RUN_CASE(name, id) case id: return loop_##name(n, vcpu, A);
#define RUN_IRQ_CASE(name, id) case id: return loop_##name##_irq(n, vcpu, A);
  if (p[P_IRQ_INTERVAL] != 0) {
    switch (p[P_VARIANT]) {
      TESTBED_DESIGNS(RUN_IRQ_CASE)
      default: return loop_any_irq(n, vcpu, A);
    }
  }
  switch (p[P_VARIANT]) {
    TESTBED_DESIGNS(RUN_CASE)
    default: return loop_any(n, vcpu, A);
  }
}
