/* glue.c: the Xen file's map_domain_page / unmap_domain_page as the port's design hooks, and the
 * shared heap the shim's Xen lives in. Included last in the translation unit testbed/xen.py builds.
 *
 * The heap (in the arena's domain words, laid out by the parent before it forks):
 *   struct domain | struct vcpu x vcpus | xzalloc pool | the per-domain window after the mapcache
 * The window is what create_perdomain_mapping may populate past MAPCACHE_VIRT_END (the old
 * design's inuse and garbage bitmaps, at MAPCACHE_VIRT_END + PAGE_SIZE): as big as its
 * BUILD_BUG_ON allows, 3 + 2 * PFN_UP(BITS_TO_LONGS(MAPCACHE_ENTRIES) * sizeof(long)) pages.
 * MAPCACHE_VIRT_START is placed MAPCACHE_ENTRIES pages below the window; the pages of the
 * mapcache itself are the PTE array's slots and never dereferenced.
 */

static struct domain *shim_d;
static struct vcpu *shim_vcpus;
static char *shim_pool, *shim_pool_end, *shim_window;
static unsigned long shim_window_bytes;
static i64 shim_slots;                 /* PTEs in the arena: vcpus * MAPCACHE_VCPU_ENTRIES */

#define SHIM_ALIGN(x, a) (((x) + (a) - 1) / (a) * (a))
#define SHIM_POOL_PER_VCPU (SHIM_ALIGN(sizeof(struct mapcache_vcpu), 64) + 64)

static unsigned long shim_window_size(void) {
  return PAGE_SIZE * (3 + 2 * PFN_UP(BITS_TO_LONGS(MAPCACHE_ENTRIES) * sizeof(long)));
}

/* Bytes of heap for `vcpus` vCPUs (testbed/variants/xen.py sizes the domain words with it). */
i64 testbed_xen_heap_bytes(i64 vcpus) {
  return (i64)(SHIM_ALIGN(sizeof(struct domain), 64) + SHIM_ALIGN(sizeof(struct vcpu) * vcpus, 64) +
               SHIM_POOL_PER_VCPU * vcpus + 64 + shim_window_size() + 64);
}

static void *shim_xzalloc(size_t size, size_t align) {
  char *p = (char *)SHIM_ALIGN((unsigned long)shim_pool, align < 8 ? 8 : align);
  if (p + size > shim_pool_end) return NULL;
  shim_pool = p + size;
  memset(p, 0, size);
  return p;
}

static int create_perdomain_mapping(struct domain *d, unsigned long va, unsigned int nr, l1_pgentry_t **pl1tab,
                                    struct page_info **ppg) {
  (void)d, (void)pl1tab, (void)ppg;
  if (va >= MAPCACHE_VIRT_START && va < MAPCACHE_VIRT_END) {
    /* the mapcache's own PTEs: the arena's PTE array, which must hold them all */
    return PFN_DOWN(va - MAPCACHE_VIRT_START) + nr <= (unsigned long)shim_slots ? 0 : -ENOMEM;
  }
  if (va >= (unsigned long)shim_window && va + nr * PAGE_SIZE <= (unsigned long)shim_window + shim_window_bytes) {
    memset((void *)va, 0, nr * PAGE_SIZE);
    return 0;
  }
  return -EINVAL;
}

/* The failure path: what the operation held is let go, as if Xen's panic had stopped it there. */
static i64 shim_recover(i64 irq_off) {
  if (shim_lock_held != NULL) {
    ticket_unlock(&shim_lock_held->word, shim_ticket);
    shim_lock_held = NULL;
  }
  shim_a->vrow[V_IRQ_OFF] = irq_off;
  return shim_status;
}

INLINE void shim_enter(struct arrays *a, i64 vcpu, int irq) {
  shim_a = a;
  shim_current = &shim_vcpus[vcpu];
  shim_vcpu_id = vcpu;
  shim_irq = irq;
  shim_found_none = 0;
}

static __attribute__((noinline)) i64 xen_map(struct arrays *a, i64 vcpu, i64 mfn, int irq) {
  shim_enter(a, vcpu, irq);
  i64 irq_off = a->vrow[V_IRQ_OFF];
  if (__builtin_setjmp(shim_jmp)) return -shim_recover(irq_off);
  unsigned long va = (unsigned long)map_domain_page(_mfn(mfn));
  if (va >= DIRECTMAP_VIRT_START) {
    a->srow[S_XEN_DIRECT] += 1;
    return (i64)virt_to_mfn(va);
  }
  return MAPCACHE_VA + (i64)PFN_DOWN(va - MAPCACHE_VIRT_START);
}

static __attribute__((noinline)) i64 xen_unmap(struct arrays *a, i64 vcpu, i64 va, int irq) {
  shim_enter(a, vcpu, irq);
  i64 irq_off = a->vrow[V_IRQ_OFF];
  if (__builtin_setjmp(shim_jmp)) return shim_recover(irq_off);
  if (va >= MAPCACHE_VA)
    unmap_domain_page((void *)(MAPCACHE_VIRT_START + pfn_to_paddr(va - MAPCACHE_VA)));
  else
    unmap_domain_page(mfn_to_virt(va));
  return ST_OK;
}

/* Lay the heap out at `heap` (bytes from testbed_xen_heap_bytes, zeroed) and run the tree's
 * mapcache_domain_init (when it has one) and mapcache_vcpu_init for every vCPU, on `a` (vCPU 0's
 * arrays; an init's counters land in its row). ST_OK, or ST_XEN_BUG with the line in srow, or
 * -errno as the init returned it. */
i64 testbed_xen_init(char *heap, i64 bytes, i64 vcpus, i64 entries, const i64 *p, i64 *dom, i64 *pte, i64 *vrow,
                     i64 *srow) {
  static struct arrays init;
  init = (struct arrays){ .p = p, .dom = dom, .pte = pte, .vrow = vrow, .srow = srow };
  memset(heap, 0, (size_t)bytes);
  char *at = (char *)SHIM_ALIGN((unsigned long)heap, 64);
  shim_d = (struct domain *)at;
  at += SHIM_ALIGN(sizeof(struct domain), 64);
  shim_vcpus = (struct vcpu *)at;
  at += SHIM_ALIGN(sizeof(struct vcpu) * vcpus, 64);
  shim_pool = at;
  at += SHIM_POOL_PER_VCPU * vcpus + 64;
  shim_pool_end = at;
  shim_window = (char *)SHIM_ALIGN((unsigned long)at, 64);
  shim_window_bytes = shim_window_size();
  shim_mapcache_start = (unsigned long)shim_window - MAPCACHE_ENTRIES * PAGE_SIZE;
  shim_slots = vcpus * entries;
  shim_d->max_vcpus = (unsigned int)vcpus;
  shim_lock_held = NULL;
  shim_build_bug_count = 0;
  shim_enter(&init, 0, 0);
  if (__builtin_setjmp(shim_jmp)) return shim_recover(0);
  int rc = 0;
#ifdef XEN_HAS_DOMAIN_INIT
  rc = mapcache_domain_init(shim_d);
#endif
  for (i64 v = 0; v < vcpus && rc == 0; v++) {
    shim_vcpus[v].vcpu_id = (int)v;
    shim_vcpus[v].processor = (unsigned int)v;
    shim_vcpus[v].domain = shim_d;
    shim_current = &shim_vcpus[v];
    shim_vcpu_id = v;
    rc = mapcache_vcpu_init(&shim_vcpus[v]);
  }
  return rc;
}

/* The lines of the BUILD_BUG_ONs that failed during the last init (up to `most`), and their count. */
i64 testbed_xen_build_bugs(i64 *out, i64 most) {
  for (i64 k = 0; k < shim_build_bug_count && k < most; k++) out[k] = shim_build_bug_lines[k];
  return shim_build_bug_count;
}

/* Where the Python side reads the Xen state: the domain's mapcache, vCPU v's, the window. */
void *testbed_xen_dcache(void) { return &shim_d->arch.pv.mapcache; }
void *testbed_xen_vcache(i64 v) { return XEN_VCACHE(&shim_vcpus[v]); }
i64 testbed_xen_sizeof(i64 which) {
  return which == 0 ? (i64)sizeof(struct mapcache_domain) : (i64)sizeof(struct mapcache_vcpu);
}
