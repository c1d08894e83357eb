/* ticket_lock.h: Xen's ticket spin lock on one shared word, as the port and the Xen shim take it.
 *
 * The word holds the head (the ticket now served) in its low 32 bits and the tail (the next
 * ticket to hand out) in its high 32 bits, as locked.py's "xen" domain layout does (X_LOCK):
 * taking a ticket is one fetch-and-add of 1 << 32, and the release stores head + 1 into the low
 * half only (Xen's spinlock.c: _spin_lock's arch_fetch_and_add on tickets.tail, then spinning on
 * tickets.head; _spin_unlock's add_sized(&lock->tickets.head, 1)). The port's locked design
 * (testbed_op.c lk_acquire / lk_release, layout xen) and the shim's spin_lock / spin_unlock
 * (xen/shim.h) both call these, so the Xen file runs on the very lock code the transcription does.
 *
 * Included by testbed_op.c after its atomics; it uses fetch_add, load_acquire,
 * store_release_lo32, cpu_relax, rdtsc and the S_ counters defined there.
 */
#ifndef TESTBED_TICKET_LOCK_H
#define TESTBED_TICKET_LOCK_H

#define TICKET_ONE ((i64)1 << 32)
#define TICKET_MASK 0xFFFFFFFFLL

/* Take a ticket and spin until it is served; the ticket, for ticket_unlock. Counts the
 * acquisition, a contended one and its spin cycles in srow; S_PROGRESS is the watchdog's pulse. */
INLINE i64 ticket_lock(i64 *word, i64 *srow) {
  i64 t = fetch_add(word, 0, TICKET_ONE);
  i64 my = (t >> 32) & TICKET_MASK;
  srow[S_LOCK_ACQ] += 1;
  if ((t & TICKET_MASK) != my) {
    srow[S_LOCK_CONTENDED] += 1;
    i64 t0 = rdtsc();
    while ((load_acquire(word, 0) & TICKET_MASK) != my) {
      cpu_relax();
      srow[S_PROGRESS] += 1;
    }
    srow[S_LOCK_SPIN] += rdtsc() - t0;
  }
  return my;
}

/* Whether another vCPU has taken a ticket behind ticket `my` (someone waits for the release). */
INLINE int ticket_waiters(i64 *word, i64 my) {
  return ((load_acquire(word, 0) >> 32) & TICKET_MASK) != ((my + 1) & TICKET_MASK);
}

INLINE void ticket_unlock(i64 *word, i64 my) { store_release_lo32(word, 0, my + 1); }

#endif
