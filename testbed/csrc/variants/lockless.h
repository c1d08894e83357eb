/* variants/lockless.h: lockless.py's map and unmap (the seed's lockless per-vCPU mapcache), in C. */
#define LL_FAULT_NO_FLUSH 1
#define LL_FAULT_FREE_HELD 2
#define LL_FAULT_NO_IRQSAVE 4
#define REFCNT_MASK 0xFF

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
