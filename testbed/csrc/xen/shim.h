/* shim.h: the Xen interfaces a tree's xen/arch/x86/domain_page.c uses, mapped onto the testbed.
 *
 * This is the one place that says what is stubbed and why. testbed/xen.py compiles the file
 * (copied from the user's tree, patched) in one translation unit after testbed_op.c (the port's
 * loop, TLB, clock and lock), this header, the constants and structs parsed from the tree's own
 * headers (xen_tree.h, generated), and shim_sched.h; every #include of the Xen file resolves
 * to an empty header, so nothing else of Xen is seen.
 *
 * Mapped onto the testbed (the real thing, same costs and counters as the transcriptions):
 *   MAPCACHE_L1ENT's __linear_l1_table / l1_linear_offset -> the shared PTE array (slot = page
 *     offset from MAPCACHE_VIRT_START); l1e_write a release store, l1e_* the testbed's PTE
 *     format (MFN | present bit; Xen's flag bits are dropped).
 *   flush_tlb_one_local, flush_tlb_local -> the vCPU's simulated TLB (the port's flush_one,
 *     flush_all, with their costs); NEED_FLUSH, tlbflush_current_time, this_cpu(tlbflush_time)
 *     -> the shared TLB clock and the vCPU's stamp (tlb.py), as Xen's flushtlb.h defines them.
 *   spin_lock / spin_unlock -> Xen's ticket lock on one shared word (../ticket_lock.h, the code
 *     the port's locked design takes); spinlock_t is that word (Xen's debug and profiling
 *     fields are not there).
 *   set_bit, clear_bit, xchg, cmpxchg -> the lock-prefixed instructions (GCC atomics);
 *     __set_bit, __clear_bit, find_*_bit -> plain C on unsigned long words, as Xen's generic bitops.
 *   current, smp_processor_id(), this_cpu(pgtable_vcpu | curr_vcpu) -> the vCPU the testbed
 *     runs (one process per vCPU, pinned: its CPU is its own); other DEFINE_PER_CPU variables
 *     are process globals.
 *   perfc_incr(name) -> a counter of the vCPU's stats row (map_domain_page_count,
 *     domain_page_tlb_flush; another name is a compile error naming it).
 *   ASSERT, BUG_ON, BUG -> a counted failure with the Xen file's line, which ends the operation
 *     (a jump back to the glue, which releases the lock and the interrupt state) and the run:
 *     FAILURE. The file is built as a debug build (no NDEBUG), so the assertions are in and
 *     the directmap shortcut is out. BUILD_BUG_ON is checked at run time (the address layout
 *     below is the shim's own, not a compile-time constant) and a failed one is reported with
 *     the run, which goes on (Xen's build would stop there).
 *   local_irq_save / restore -> the testbed's interrupt state (vrow[V_IRQ_OFF]); spin_lock,
 *     spin_unlock and l1e_write are interrupt arrival points (deferred, since the file runs
 *     them with interrupts off).
 *   create_perdomain_mapping, xzalloc -> the shared segment: the domain, its vCPUs, the pool
 *     xzalloc draws from and the per-domain window after the mapcache (where the old design
 *     keeps its inuse and garbage bitmaps) are one heap in the arena's domain words, laid out
 *     by the parent before it forks, so the vCPU processes see Xen's pointers at the same address.
 * Stubbed, because the testbed has no such state (each is what a PV vCPU running on its own
 *   page tables sees): is_pv_vcpu / is_pv_domain true; pagetable_is_null false;
 *   efi_rs_using_pgtables false; idle_vcpu[] NULL; sync_local_execstate nothing; the override
 *   vCPU never set; vmap / vunmap / virt_to_xen_l1e (map_domain_page_global) return NULL,
 *   the testbed never calls them; mem_hotplug and max_page 0 (used only with NDEBUG).
 * Address layout (the shim's, not Xen's): MAPCACHE_VIRT_START is a run-time address chosen so
 *   that the window after MAPCACHE_VIRT_END lies in the heap; DIRECTMAP_VIRT_START is above
 *   every user address, so mfn_to_virt addresses are told apart (counted, never expected).
 */
#ifndef TESTBED_XEN_SHIM_H
#define TESTBED_XEN_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* --- the counters of testbed/abi.py this side writes (S_ 88..103: Xen's own code) ---------- */
enum {
  S_XEN_MAPS = 88,        /* perfc map_domain_page_count */
  S_XEN_TLB_FLUSH = 89,   /* perfc domain_page_tlb_flush */
  S_XEN_BUGS = 90,        /* ASSERT / BUG_ON / BUG / BUILD_BUG_ON that failed */
  S_XEN_BUG_LINE = 91,    /* ... the Xen file's line of the first */
  S_XEN_BUG_KIND = 92,    /* ... which macro (SHIM_ASSERT ...) */
  S_XEN_DIRECT = 93,      /* maps the file answered from the directmap: must stay 0 */
  S_XEN_PTE_WRITES = 94,  /* l1e_write calls */
};
enum { ST_XEN_BUG = 7 };
enum { SHIM_ASSERT = 1, SHIM_BUG_ON = 2, SHIM_BUG = 3, SHIM_BUILD_BUG_ON = 4, SHIM_INIT = 5 };

/* --- types ------------------------------------------------------------------------------- */
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef int8_t s8;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;
typedef bool bool_t;
typedef unsigned long paddr_t;
typedef struct { unsigned long mfn; } mfn_t;
typedef struct { u64 l1; } l1_pgentry_t;
typedef struct { unsigned long pfn; } pagetable_t;
typedef struct { i64 word; } spinlock_t;   /* ../ticket_lock.h: head low 32 bits, tail high 32 */
struct page_info;

#define _mfn(x) ((mfn_t){ (unsigned long)(x) })
#define mfn_x(m) ((m).mfn)
#define mfn_eq(a, b) (mfn_x(a) == mfn_x(b))

/* --- compiler, sizes, address layout ------------------------------------------------------- */
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define ACCESS_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define __init
#define __read_mostly
#define NIL(type) ((type *)-sizeof(type))
#define PAGE_SHIFT 12
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#define PAGETABLE_ORDER 9
#define BITS_PER_LONG 64
#define BITS_TO_LONGS(bits) (((bits) + BITS_PER_LONG - 1) / BITS_PER_LONG)
#define BITMAP_LAST_WORD_MASK(nbits) (((nbits) % BITS_PER_LONG) ? (1UL << ((nbits) % BITS_PER_LONG)) - 1 : ~0UL)
#define PFN_DOWN(x) ((x) >> PAGE_SHIFT)
#define PFN_UP(x) (((x) + PAGE_SIZE - 1) >> PAGE_SHIFT)
#define pfn_to_paddr(pfn) ((paddr_t)(pfn) << PAGE_SHIFT)
#define CONFIG_PAGING_LEVELS 4          /* x86-64 (asm-x86/config.h) */
#define PERDOMAIN_SLOT_MBYTES 1024UL    /* PML4_ENTRY_BYTES >> (20 + PAGETABLE_ORDER) (asm-x86/config.h) */
#define MAX_VIRT_CPUS 8192              /* GDT_LDT_MBYTES << (20 - GDT_LDT_VCPU_VA_SHIFT) (asm-x86/config.h) */
static unsigned long shim_mapcache_start;   /* set by testbed_xen_init: see the heap in glue.c */
#define MAPCACHE_VIRT_START shim_mapcache_start
#define MAPCACHE_VIRT_END (MAPCACHE_VIRT_START + MAPCACHE_ENTRIES * PAGE_SIZE)
#define ARG_XLAT_VIRT_START (MAPCACHE_VIRT_START + (PERDOMAIN_SLOT_MBYTES << 20))
#define DIRECTMAP_VIRT_START (1UL << 62)
#define HYPERVISOR_VIRT_END DIRECTMAP_VIRT_START
#define VMAP_VIRT_START 0UL
#define VMAP_VIRT_END 0UL
#define mfn_to_virt(mfn) ((void *)(DIRECTMAP_VIRT_START + ((unsigned long)(mfn) << PAGE_SHIFT)))
#define virt_to_mfn(va) (((unsigned long)(va) - DIRECTMAP_VIRT_START) >> PAGE_SHIFT)
#define __pa(x) ((unsigned long)(x))
#define idle_pg_table 0
#define cr3_pa(cr3) (cr3)
#define read_cr3() 0UL
#define mem_hotplug 0
#define max_page 0UL
#define ENOMEM 12
#define EINVAL 22

/* --- the vCPU this process runs; its arrays (set by glue.c on every call) ------------------ */
struct vcpu;
struct domain;
static struct arrays *shim_a;
static struct vcpu *shim_current;
static int shim_irq;
static i64 shim_vcpu_id;
static void *shim_jmp[5];
#define current shim_current
#define smp_processor_id() ((unsigned int)current->vcpu_id)
#define DEFINE_PER_CPU(type, name) __typeof__(type) shim_this_cpu_##name
#define this_cpu(name) shim_this_cpu_##name
#define per_cpu(name, cpu) shim_this_cpu_##name
#define shim_this_cpu_tlbflush_time (shim_a->vrow[V_TLBFLUSH_TIME])
#define shim_this_cpu_pgtable_vcpu (current)
#define shim_this_cpu_curr_vcpu (current)
static struct vcpu *shim_idle_vcpu[1024];   /* config.MAX_VCPUS: NULL, never the running vCPU */
#define idle_vcpu shim_idle_vcpu
#define is_pv_vcpu(v) ((void)(v), 1)
#define is_pv_domain(d) ((void)(d), 1)
#define pagetable_is_null(pt) ((void)(pt), 0)
#define efi_rs_using_pgtables() 0
#define sync_local_execstate() do {} while (0)
#define in_irq() 0
#define SYS_STATE_boot 2
#define SYS_STATE_active 3
#define system_state SYS_STATE_active

/* --- failures: counted, with the line, then back to the glue ------------------------------- */
/* A BUG_ON right after a bitmap search of this operation found no clear bit is the mapcache
 * out of slots: the transcriptions' exhaustion (ST_EXHAUSTED, the `exhaustion` check), as both
 * designs tried state it (BUG_ON(idx >= dcache->entries), BUG_ON(idx >= MAPCACHE_VCPU_ENTRIES)).
 * Any other failure is an assertion of the file (ST_XEN_BUG, `xen_assertions`). */
static int shim_found_none;
static i64 shim_status;
static __attribute__((noinline, cold, noreturn)) void shim_bug(int line, int kind) {
  i64 *srow = shim_a->srow;
  if (srow[S_XEN_BUG_LINE] == 0) {
    srow[S_XEN_BUG_LINE] = line;
    srow[S_XEN_BUG_KIND] = kind;
  }
  if (kind == SHIM_BUG_ON && shim_found_none) {
    srow[S_EXHAUSTED] += 1;
    shim_status = ST_EXHAUSTED;
  } else {
    srow[S_XEN_BUGS] += 1;
    shim_status = ST_XEN_BUG;
  }
  __builtin_longjmp(shim_jmp, 1);
}
#define ASSERT(p) do { if (unlikely(!(p))) shim_bug(__LINE__, SHIM_ASSERT); } while (0)
#define BUG_ON(p) do { if (unlikely(p)) shim_bug(__LINE__, SHIM_BUG_ON); } while (0)
#define BUG() shim_bug(__LINE__, SHIM_BUG)
/* A failed BUILD_BUG_ON would stop Xen's build; here it is recorded (testbed_xen_build_bugs) and
 * reported with the run, which goes on: the seed's own check is written inverted and fails. */
static i64 shim_build_bug_lines[16], shim_build_bug_count;
#define BUILD_BUG_ON(c) do { if ((c) && shim_build_bug_count < 16) shim_build_bug_lines[shim_build_bug_count++] = __LINE__; } while (0)
#define ASSERT_UNREACHABLE() shim_bug(__LINE__, SHIM_ASSERT)

/* --- perf counters ------------------------------------------------------------------------ */
#define SHIM_PERFC_map_domain_page_count S_XEN_MAPS
#define SHIM_PERFC_domain_page_tlb_flush S_XEN_TLB_FLUSH
#define perfc_incr(name) (shim_a->srow[SHIM_PERFC_##name] += 1)

/* --- interrupts --------------------------------------------------------------------------- */
INLINE unsigned long shim_irq_save(void) {
  shim_a->vrow[V_IRQ_OFF] += 1;
  return 0;
}
#define local_irq_save(flags) ((flags) = shim_irq_save())
#define local_irq_restore(flags) ((void)(flags), shim_a->vrow[V_IRQ_OFF] -= 1)
#define local_irq_is_enabled() (shim_a->vrow[V_IRQ_OFF] == 0)
#define SHIM_ARRIVAL() irq_point(shim_a, shim_vcpu_id, shim_irq)

/* --- the lock ----------------------------------------------------------------------------- */
static spinlock_t *shim_lock_held;   /* the lock this vCPU holds, released if a failure jumps out */
static i64 shim_ticket, shim_hold_t0;
INLINE void shim_spin_lock(spinlock_t *l) {
  shim_ticket = ticket_lock(&l->word, shim_a->srow);
  shim_lock_held = l;
  shim_hold_t0 = shim_a->srow[S_SAMPLING] != 0 ? rdtsc() : 0;
  SHIM_ARRIVAL();                                                  /* lock held */
}
INLINE void shim_spin_unlock(spinlock_t *l) {
  i64 *srow = shim_a->srow;
  if (shim_hold_t0 != 0) {
    srow[S_LOCK_HOLD] += rdtsc() - shim_hold_t0;
    srow[S_LOCK_HOLD_SAMPLES] += 1;
  }
  shim_lock_held = NULL;
  ticket_unlock(&l->word, shim_ticket);
  SHIM_ARRIVAL();                                                  /* lock released */
}
#define spin_lock_init(l) ((l)->word = 0)
#define spin_lock(l) shim_spin_lock(l)
#define spin_unlock(l) shim_spin_unlock(l)

/* --- bit operations and atomics (x86: lock-prefixed for the atomic ones) -------------------- */
#define SHIM_WORD(nr, addr) (&((unsigned long *)(addr))[(nr) / BITS_PER_LONG])
#define SHIM_BIT(nr) (1UL << ((nr) % BITS_PER_LONG))
#define set_bit(nr, addr) ((void)__atomic_fetch_or(SHIM_WORD(nr, addr), SHIM_BIT(nr), __ATOMIC_SEQ_CST))
#define clear_bit(nr, addr) ((void)__atomic_fetch_and(SHIM_WORD(nr, addr), ~SHIM_BIT(nr), __ATOMIC_SEQ_CST))
#define test_and_set_bit(nr, addr) ((__atomic_fetch_or(SHIM_WORD(nr, addr), SHIM_BIT(nr), __ATOMIC_SEQ_CST) & SHIM_BIT(nr)) != 0)
#define test_and_clear_bit(nr, addr) ((__atomic_fetch_and(SHIM_WORD(nr, addr), ~SHIM_BIT(nr), __ATOMIC_SEQ_CST) & SHIM_BIT(nr)) != 0)
#define __set_bit(nr, addr) ((void)(*SHIM_WORD(nr, addr) |= SHIM_BIT(nr)))
#define __clear_bit(nr, addr) ((void)(*SHIM_WORD(nr, addr) &= ~SHIM_BIT(nr)))
#define test_bit(nr, addr) ((*SHIM_WORD(nr, addr) & SHIM_BIT(nr)) != 0)
#define xchg(ptr, v) __atomic_exchange_n((ptr), (v), __ATOMIC_SEQ_CST)
#define cmpxchg(ptr, o, n) ({ __typeof__(*(ptr)) shim_o_ = (o); \
    __atomic_compare_exchange_n((ptr), &shim_o_, (n), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); shim_o_; })
#define smp_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define smp_wmb() __atomic_signal_fence(__ATOMIC_SEQ_CST)
#define smp_rmb() __atomic_signal_fence(__ATOMIC_SEQ_CST)
#define barrier() __atomic_signal_fence(__ATOMIC_SEQ_CST)

/* Xen's generic find_next_zero_bit: the first clear bit at or after `off`, or `size`. */
INLINE unsigned int shim_find_next_zero_bit(const unsigned long *addr, unsigned long size, unsigned long off) {
  unsigned long i = size;
  while (off < size) {
    unsigned long w = ~addr[off / BITS_PER_LONG] >> (off % BITS_PER_LONG);
    if (w != 0) {
      i = off + (unsigned long)__builtin_ctzl(w);
      break;
    }
    off = (off / BITS_PER_LONG + 1) * BITS_PER_LONG;
  }
  if (i > size) i = size;
  shim_found_none = i == size;
  return (unsigned int)i;
}
INLINE unsigned int shim_find_next_bit(const unsigned long *addr, unsigned long size, unsigned long off) {
  while (off < size) {
    unsigned long w = addr[off / BITS_PER_LONG] >> (off % BITS_PER_LONG);
    if (w != 0) {
      unsigned long i = off + (unsigned long)__builtin_ctzl(w);
      return i < size ? (unsigned int)i : (unsigned int)size;
    }
    off = (off / BITS_PER_LONG + 1) * BITS_PER_LONG;
  }
  return (unsigned int)size;
}
#define find_next_zero_bit(addr, size, off) shim_find_next_zero_bit((const unsigned long *)(addr), (size), (off))
#define find_first_zero_bit(addr, size) shim_find_next_zero_bit((const unsigned long *)(addr), (size), 0)
#define find_next_bit(addr, size, off) shim_find_next_bit((const unsigned long *)(addr), (size), (off))
#define find_first_bit(addr, size) shim_find_next_bit((const unsigned long *)(addr), (size), 0)

/* --- page-table entries: the shared PTE array ---------------------------------------------- */
#define __linear_l1_table ((l1_pgentry_t *)shim_a->pte)
#define l1_linear_offset(va) (((unsigned long)(va) - MAPCACHE_VIRT_START) >> PAGE_SHIFT)
#define __PAGE_HYPERVISOR_RW 0
#define l1e_get_pfn(e) ((unsigned long)((e).l1 & (u64)PTE_MFN_MASK))
#define l1e_get_mfn(e) _mfn(l1e_get_pfn(e))
#define l1e_get_intpte(e) ((e).l1)
#define l1e_empty() ((l1_pgentry_t){ 0 })
#define l1e_from_mfn(m, flags) ((void)(flags), (l1_pgentry_t){ mfn_x(m) | (u64)PTE_PRESENT })
#define l1e_from_pfn(pfn, flags) l1e_from_mfn(_mfn(pfn), flags)
INLINE void shim_l1e_write(l1_pgentry_t *pl1e, l1_pgentry_t e) {
  SHIM_ARRIVAL();                                                  /* PTE about to change */
  shim_a->srow[S_XEN_PTE_WRITES] += 1;
  __atomic_store_n(&pl1e->l1, e.l1, __ATOMIC_RELEASE);
}
#define l1e_write(p, e) shim_l1e_write((p), (e))

/* --- the TLB and its clock (tlb.py; Xen's flushtlb.h) ------------------------------------- */
#define tlbflush_current_time() ((u32)clock_now(shim_a->dom))
#define NEED_FLUSH(cpu_stamp, lastuse) need_flush((u32)(cpu_stamp), (u32)(lastuse), tlbflush_current_time())
#define flush_tlb_local() flush_all(shim_a)
#define flush_tlb_one_local(va) flush_one(shim_a, (i64)(((unsigned long)(va) - MAPCACHE_VIRT_START) >> PAGE_SHIFT))

/* --- allocation: the shared heap (glue.c) -------------------------------------------------- */
static void *shim_xzalloc(size_t size, size_t align);
static int create_perdomain_mapping(struct domain *d, unsigned long va, unsigned int nr, l1_pgentry_t **pl1tab,
                                    struct page_info **ppg);
#define xzalloc(type) ((type *)shim_xzalloc(sizeof(type), __alignof__(type)))
#define xzalloc_array(type, n) ((type *)shim_xzalloc(sizeof(type) * (n), __alignof__(type)))
#define xfree(p) ((void)(p))
#define vmap(mfns, n) ((void)(mfns), (void *)0)
#define vunmap(va) ((void)(va))
#define virt_to_xen_l1e(va) ((l1_pgentry_t *)0)
#define vmap_to_mfn(va) _mfn(0)

#endif
