/* variants/directmap.h: directmap.py's map and unmap, in C: the floor, no mapcache at all. */
INLINE i64 directmap_map(struct arrays *a, i64 vcpu, i64 mfn, int irq) { return mfn; }

INLINE i64 directmap_unmap(struct arrays *a, i64 vcpu, i64 va, int irq) { return ST_OK; }
