"""kmap-local: Linux's ``kmap_local_page``, a per-vCPU stack of slots.

Linux maps a highmem page for a short while with ``kmap_local_page``: each CPU
owns a fixed window of ``KM_MAX_IDX`` (16) slots used as a stack. There is no
hash and no lock, and nothing is cached after an unmap: the design trades the
reuse a hash would give for an unmap that leaves nothing behind.

Algorithm. Each vCPU owns ``MAPCACHE_VCPU_ENTRIES`` (E, default 16, Linux's
KM_MAX_IDX) slots at global indices ``vcpu * E + idx`` and a stack depth
``top`` in its own row.

- map: the slot is ``top``; none left (``top == E``) is exhaustion (Linux's
  BUG_ON). Push first (``top += 1``), then write the PTE. No flush: the unmap
  that last released the slot flushed it.
- unmap: only the slot on top may be released (Linux WARN_ONs otherwise; here
  an out-of-order unmap is refused with ``ST_ORDER``, which ends the run).
  Clear the PTE, flush that one slot from the local TLB (``invlpg``), then pop.

Push-before-use and pop-after-clear are what let Linux run it with interrupts
enabled (it only disables migration, or preemption): an interrupt arriving at
any point inside map or unmap pushes above whatever the interrupted code holds
or is about to hold, and pops before it returns, so the stack stays LIFO.
Hence ``IRQS_OFF = ()``: with ``--irq-rate`` (testbed/irq.py) an interrupt
is taken at any of its arrival points (``irq_point``: after the push, after
the PTE write; in unmap after the PTE is cleared and after the flush), its
handler's map and unmap nested above the interrupted slot. Preemption (here:
the hypervisor model's vCPU switch) never happens inside map or unmap. The
handler's slot counts towards the stack: with interrupts, the stack must hold
the deepest walk plus one (``validate``).

Invariants (``check``): ``top`` equals the vCPU's live mappings, and the k-th
live mapping (in map order) is slot k with a PTE mapping its MFN; every slot
at or above ``top`` has an empty PTE (a present one is a leak: nothing will
ever clear it). At every map the slot's PTE must be empty (Linux's
``BUG_ON(!pte_none(...))``): a present one counts an invariant violation.

Simplifications: the per-task save and restore of the stack on a context switch
(Linux keeps the stack in the task and rewrites the slots when it switches)
has nothing to do here: a vCPU is one process; the slot window is fixed per
vCPU instead of per host CPU, which is the same while vCPUs are pinned (and a
moved vCPU flushes its whole TLB anyway). The nested workloads already release
in reverse order.

Negative control ``kmap-local-noflush`` (``FAULT_NO_FLUSH``) skips the
``invlpg`` at unmap: the next map of the same slot writes a new PTE, but the
TLB still translates the slot to the old frame, which the access check reports
as a stale translation.
"""

from ..jit import inline_kernel

from .. import abi, tlb
from .contract import domain_vcpus, nested_walk
from ..atomics import store_release
from ..irq import irq_point

NAME = "kmap-local"
DESCRIPTION = "Linux's kmap_local_page: per-vCPU stack of 16 slots, PTE cleared and invlpg at LIFO unmap, no hash"
DEFAULT_ENTRIES = 16
GEOMETRY = {
    "entries": "Linux include/asm-generic/kmap_size.h: KM_MAX_IDX 16 (33 with CONFIG_DEBUG_KMAP_LOCAL, guard "
               "pages between the maps)",
    "hash": "none: kmap_local has no hash",
    "pool": "per CPU: KM_MAX_IDX fixmap slots used as a stack (mm/highmem.c kmap_local_idx_push)",
}
MAX_ENTRIES = 1 << 16
FAULT_NO_FLUSH = 1
IRQS_OFF = ()                   # safe by ordering, see above

V_TOP = abi.V_RESERVED          # stack depth: slots 0..top-1 are mapped


# The stack must hold the deepest nested walk: E >= PAGING_LEVELS**2 (Linux: 16 = 4**2).
validate = nested_walk("kmap-local")


def state_shape(cfg):
    """Words of shared state: (domain words, domain bitmap words, per-vCPU row words)."""
    return 0, 0, V_TOP + 1


def init_state(views, cfg):
    views["vst"][:, V_TOP] = 0


@inline_kernel
def map_page(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, irq=None):
    e = p[abi.P_ENTRIES]
    top = vrow[V_TOP]
    if top >= e:
        srow[abi.S_EXHAUSTED] += 1
        return -abi.ST_EXHAUSTED
    slot = vcpu * e + top
    vrow[V_TOP] = top + 1
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # pushed, PTE not yet written
    if (pte[slot] & tlb.PTE_PRESENT) != 0:
        srow[abi.S_INVARIANT] += 1           # Linux: BUG_ON(!pte_none(*kmap_pte))
    store_release(pte, slot, mfn | tlb.PTE_PRESENT)
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # mapped, not yet returned
    if p[abi.P_LONG_HOLD] > 0:
        tlb.spin_cycles(p[abi.P_LONG_HOLD])
    return abi.MAPCACHE_VA + slot


@inline_kernel
def unmap_page(vcpu, va, p, dom, pte, dbits, vrow, srow, tlbv, irq=None):
    e = p[abi.P_ENTRIES]
    slot = va - abi.MAPCACHE_VA
    idx = slot - vcpu * e
    if idx < 0 or idx >= e or (pte[slot] & tlb.PTE_PRESENT) == 0:
        return abi.ST_BAD_VA
    top = vrow[V_TOP]
    if idx != top - 1:
        return abi.ST_ORDER
    store_release(pte, slot, 0)
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # PTE cleared, not yet flushed
    if (p[abi.P_FAULT] & FAULT_NO_FLUSH) == 0:
        tlb.flush_one(tlbv, p, slot, srow)
    irq_point(irq, vcpu, p, dom, pte, dbits, vrow, srow, tlbv)      # flushed, not yet popped
    vrow[V_TOP] = top - 1
    return abi.ST_OK


def check(views, cfg, live_by_vcpu, victims=frozenset()):
    """The stack of every vCPU against its live mappings (see the module essay).

    slot_leaks: present PTEs at or above the top. invariant_violations: a top
    out of range or not equal to the live count, a live mapping not at its
    stack position or whose PTE does not map its MFN.
    """
    e = cfg.entries
    vst, pte = views["vst"], views["pte"]
    present = int(tlb.PTE_PRESENT)
    leaks = bad = 0
    for v in range(domain_vcpus(cfg)):      # idle vCPUs too: their stacks must stay empty
        if v in victims:          # killed mid-operation: its private state is half updated
            continue
        base = v * e
        top = int(vst[v, V_TOP])
        live = live_by_vcpu.get(v, [])
        if not 0 <= top <= e or top != len(live):
            bad += 1
        for k, (va, mfn) in enumerate(live):
            if va != abi.MAPCACHE_VA + base + k or k >= e or pte[base + k] != (mfn | present):
                bad += 1
        for i in range(max(0, min(top, e)), e):
            if pte[base + i] != 0:
                leaks += 1
    return {"slot_leaks": leaks, "invariant_violations": bad}
