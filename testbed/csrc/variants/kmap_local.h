/* variants/kmap_local.h: kmap_local.py's map and unmap (a per-vCPU stack of slots, Linux's kmap_local), in C. */
#define KM_FAULT_NO_FLUSH 1
#define KM_V_TOP V_RESERVED

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
