/* variants/percpu.h: percpu.py's map and unmap (per-vCPU pools with a batched flush at a wrap), in C. */
#define PC_FAULT_NO_FLUSH 1
#define PC_FAULT_EAGER_REUSE 2
#define PC_V_CURSOR V_RESERVED
#define PC_V_HASH (V_RESERVED + 1)
#define PC_NOTINUSE (-1)

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
        if (vrow[hi + i] != PC_NOTINUSE && vrow[hr + i] == 0) {
          idx = vrow[hi + i];
          store_release(pte, base + idx, 0);
          vrow[hi + i] = PC_NOTINUSE;
          vrow[hm + i] = PC_NOTINUSE;
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
    if (old != PC_NOTINUSE) pc_retire(vrow, pte, base, gb, iu, old, eager);
    vrow[hm + b] = mfn;
    vrow[hi + b] = idx;
  } else {
    pc_retire(vrow, pte, base, gb, iu, idx, eager);
  }
  irq_restore(a, irq, 1);
  return ST_OK;
}
