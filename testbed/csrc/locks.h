/* locks.h: the spinlocks a design can take, each an acquire and a release on words it is given.
 *
 * Port of the locks the Python side runs (their index is p[P_LOCK], named in testbed_locks in
 * locked.LOCKS order; testbed.native refuses a port whose names disagree). The words are the
 * caller's: a design passes the indices of its lock word, its owner word and, for MCS, its
 * first queue node, so the lock code knows nothing of any design's layout. Xen's own ticket
 * lock on one word (the "xen" domain layout) is ticket_lock.h, shared with the Xen shim.
 *
 * Included by testbed_op.c after its atomics and counters.
 */
#ifndef TESTBED_LOCKS_H
#define TESTBED_LOCKS_H

enum { LOCK_TICKET = 0, LOCK_MCS = 1, LOCK_TAS = 2 };
const char testbed_locks[] = "ticket,mcs,tas";
#define TAS_BACKOFF_MAX 256
#define N_NEXT 0
#define N_LOCKED 1

/* --- ticket, head and tail in two words (lw: the head now served, lw + 1: the next ticket) --- */
INLINE i64 ticket2_lock(i64 *dom, i64 *srow, i64 lw) {
  i64 my = fetch_add(dom, lw + 1, 1);
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
  return my;
}

INLINE int ticket2_waiters(i64 *dom, i64 lw, i64 my) { return load_acquire(dom, lw + 1) != my + 1; }

INLINE void ticket2_unlock(i64 *dom, i64 lw, i64 my) { store_release(dom, lw, my + 1); }

/* --- MCS: lw the tail (a vCPU + 1, 0 when free); each vCPU's node 8 words from nodes on ------- */
static i64 mcs_node(i64 nodes, i64 vcpu) { return nodes + 8 * vcpu; }

static void mcs_lock(i64 *dom, i64 *srow, i64 vcpu, i64 lw, i64 own, i64 nodes) {
  i64 node = mcs_node(nodes, vcpu);
  srow[S_LOCK_ACQ] += 1;
  dom[node + N_NEXT] = 0;
  dom[node + N_LOCKED] = 1;
  i64 pred = exchange(dom, lw, vcpu + 1);
  if (pred != 0) {
    srow[S_LOCK_CONTENDED] += 1;
    i64 t0 = rdtsc();
    store_release(dom, mcs_node(nodes, pred - 1) + N_NEXT, vcpu + 1);
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

/* The successor to hand the lock to (a vCPU + 1), or 0 when the lock is free again. */
static i64 mcs_successor(i64 *dom, i64 *srow, i64 vcpu, i64 lw, i64 nodes) {
  i64 node = mcs_node(nodes, vcpu);
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

INLINE void mcs_unlock(i64 *dom, i64 nodes, i64 nxt) { store_release(dom, mcs_node(nodes, nxt - 1) + N_LOCKED, 0); }

/* --- test-and-set with exponential backoff; waiters: the word counting the spinning vCPUs ----- */
static int tas_try(i64 *dom, i64 lw) { return load_acquire(dom, lw) == 0 && exchange(dom, lw, 1) == 0; }

static void tas_lock(i64 *dom, i64 *srow, i64 vcpu, i64 lw, i64 own, i64 waiters) {
  srow[S_LOCK_ACQ] += 1;
  if (!tas_try(dom, lw)) {
    srow[S_LOCK_CONTENDED] += 1;
    i64 t0 = rdtsc();
    fetch_add(dom, waiters, 1);
    i64 delay = 1;
    for (;;) {
      for (i64 k = 0; k < delay; k++) cpu_relax();
      srow[S_PROGRESS] += 1;
      if (tas_try(dom, lw)) break;
      delay = 2 * delay < TAS_BACKOFF_MAX ? 2 * delay : TAS_BACKOFF_MAX;
    }
    fetch_add(dom, waiters, -1);
    srow[S_LOCK_SPIN] += rdtsc() - t0;
  }
  dom[own] = vcpu + 1;
}

INLINE int tas_waiters(i64 *dom, i64 waiters) { return load_acquire(dom, waiters) > 0; }

INLINE void tas_unlock(i64 *dom, i64 lw) { store_release(dom, lw, 0); }

#endif
