/* variants/locked.h: locked.py's map and unmap (Xen's old mapcache), in C.
 *
 * One shared pool of slots under one domain lock (locks.h: ticket, MCS or test-and-set, by
 * p[P_LOCK]), its words laid out as Xen's struct (layout "xen") or one cache line each
 * ("padded"), by p[P_DOM_LAYOUT]; testbed_dom_layouts names them in locked.DOM_LAYOUTS order.
 */
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
#define V_SHADOW_EPOCH V_RESERVED
#define V_HASH (V_RESERVED + 8)
#define NOTINUSE (-1)
#define LK_FAULT_NO_LOCK 1
#define LK_FAULT_NO_EPOCH_FLUSH 2
#define LK_FAULT_GARBAGE_HELD 4
#define LK_FAULT_GARBAGE_PTE 8
#define REFCNT_LIMIT ((i64)1 << 32)

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
/* locked.acquire: the lock of kind `kind` in layout `layout`; a token for lk_release (the ticket). */
static i64 lk_acquire(i64 *dom, i64 *srow, i64 vcpu, i64 kind, i64 layout) {
  i64 lw = lock_word(layout, kind), own, hts, hfrom;
  owner_words(layout, &own, &hts, &hfrom);
  i64 my = 0;
  if (kind == LOCK_MCS) {
    mcs_lock(dom, srow, vcpu, lw, own, D_MCS_NODES);
  } else if (kind == LOCK_TAS) {
    tas_lock(dom, srow, vcpu, lw, own, D_TAS_WAITERS);
  } else if (layout == LAYOUT_XEN) {
    my = ticket_lock(&dom[lw], srow);
    dom[own] = vcpu + 1;
  } else {
    my = ticket2_lock(dom, srow, lw);
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
    i64 nxt = mcs_successor(dom, srow, vcpu, lw, D_MCS_NODES);
    if (nxt != 0) {
      dom[hfrom] = vcpu + 1;
      dom[hts] = rdtsc();
      mcs_unlock(dom, D_MCS_NODES, nxt);
    }
  } else if (kind == LOCK_TAS) {
    dom[own] = 0;
    if (tas_waiters(dom, D_TAS_WAITERS)) {
      dom[hfrom] = vcpu + 1;
      dom[hts] = rdtsc();
    }
    tas_unlock(dom, lw);
  } else if (layout == LAYOUT_XEN) {
    if (ticket_waiters(&dom[lw], my)) {
      dom[hfrom] = vcpu + 1;
      dom[hts] = rdtsc();
    }
    dom[own] = 0;
    ticket_unlock(&dom[lw], my);
  } else {
    if (ticket2_waiters(dom, lw, my)) {
      dom[hfrom] = vcpu + 1;
      dom[hts] = rdtsc();
    }
    dom[own] = 0;
    ticket2_unlock(dom, lw, my);
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
