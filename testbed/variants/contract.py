"""What a mapcache variant module provides (docs/variants.md explains how to write one).

A design is one module in ``testbed/variants/``, its C map and unmap
(``testbed/csrc/variants/<module>.h``), its test model and adapter
(``tests/designs/<module>.py``) and one line in the registry
(``testbed/variants/__init__.py``); this is the module's part. The registry checks every module against
this contract when it is imported and fills each optional hook the module
leaves out with the do-nothing default below, so that the harness, the CLI and
the stress driver call hooks without asking which variant they run.

Required names:

- ``NAME`` (str): the name users type (``--variant NAME``).
- ``DESCRIPTION`` (str): one line for ``testbed variants``.
- ``DEFAULT_ENTRIES`` (int): MAPCACHE_VCPU_ENTRIES when ``--entries`` is not given.
- ``MAX_ENTRIES`` (int): the most slots per vCPU its state can hold.
- ``GEOMETRY`` (dict): where its default geometry comes from, in words naming
  the real code: ``entries`` (``DEFAULT_ENTRIES``), ``hash`` (MAPHASH_ENTRIES)
  and ``pool`` (how many slots, shared or per vCPU). ``testbed variants``
  prints it; docs/fidelity.md is the table of them.
- ``state_shape(cfg)``: words of shared state, sized for the domain's
  ``domain_vcpus(cfg)`` (below; the harness gives ``vst`` that many rows and
  ``pte`` that many times ``cfg.entries`` slots), ``(domain words, domain bitmap
  words, per-vCPU row words)``; the row starts with ``abi.V_RESERVED`` words
  that belong to the harness and the TLB.
- ``init_state(views, cfg)``: fill a fresh arena's variant state.
- ``map_page(vcpu, mfn, p, dom, pte, dbits, vrow, srow, tlbv, irq=None)``:
  compiled with ``jit.inline_kernel``; the virtual address (``abi.MAPCACHE_VA
  + slot``, or below it for a direct-map address), or ``-status``. The last
  argument, optional, is the interrupt context for ``testbed.irq``'s
  ``irq_point``, ``irq_save`` and ``irq_restore`` (``None`` compiles them to
  nothing; a hook without the argument has no arrival points inside, and
  interrupts then arrive only between its operations).
- ``unmap_page(vcpu, va, p, dom, pte, dbits, vrow, srow, tlbv, irq=None)``:
  compiled likewise; a status, ``abi.ST_OK`` when all went well.
- ``check(views, cfg, live_by_vcpu, victims=frozenset())``: the variant's
  invariants on a quiescent state, given the live mappings ``{vcpu: [(va,
  mfn), ...]}``; a dict with ``slot_leaks`` and ``invariant_violations``.
  ``victims`` are vCPUs that were killed, maybe inside an operation: what only
  their kill explains (their own half-updated state, a slot taken but not yet
  listed, a lock they held) must not be counted against the design.

Optional names (default in brackets):

- ``validate(cfg)`` [accepts everything]: raise ``UsageError`` for a geometry
  the design cannot run (``--unchecked`` is the user's way past it).
- ``describe_stall(views, cfg, vcpu)`` [``{}``]: what a stopped vCPU holds and
  who waits for it, for the watchdog's report.
- ``lock_holder(views, cfg)`` [``None``]: the vCPU holding the variant's lock
  now, or None; ``stress --inject stop`` stops the holder when there is one.
- ``LOCKS`` [``()``]: the lock implementations the variant can run under, by
  ``--lock`` name, the default first; the kernel reads the chosen one's index
  from ``p[abi.P_LOCK]``. A variant without a lock refuses ``--lock``.
- ``DOM_LAYOUTS`` [``()``]: the layouts of its domain words it can run with, by
  ``--dom-layout`` name, the default first; the kernel reads the chosen one's
  index from ``p[abi.P_DOM_LAYOUT]``. A variant without them refuses ``--dom-layout``.
- ``IRQS_OFF`` [``()``]: the operations (``"map"``, ``"unmap"``) that run with
  interrupts disabled from start to end, as the real code does with
  ``local_irq_save``. The compiled hooks do the disabling themselves
  (``irq_save``/``irq_restore``, which keep the per-vCPU word
  ``vrow[abi.V_IRQ_OFF]``), so that a negative control can leave it out; an
  interrupt arriving inside an operation named here is deferred to its end.
  ``tests/test_irq.py`` checks the declaration against the compiled code.
- ``resolve(cfg)`` [the config as it is]: a config with the fields the design decides itself
  (the xen design: ``entries`` and ``hash_entries`` from the tree's headers).
- ``NATIVE`` [False] and ``runner(cfg)`` [``loops.run_ops``]: a native design (``xen``) has
  no compiled ``map_page`` / ``unmap_page``; its ``runner`` is a function of ``run_ops``'s
  signature that runs its C loop, which the harness and the vCPU worker call instead.
- ``FAULT_*`` (int bits): the faults its negative controls switch on, read
  from ``p[abi.P_FAULT]``; the controls themselves are registry lines.

Compiled hooks must take arrays and scalars only (no closures), never raise,
allocate or print, and keep their shared writes to their own cache lines or to
atomics (see docs/variants.md).
"""

from __future__ import annotations

from types import ModuleType

REQUIRED = ("NAME", "DESCRIPTION", "DEFAULT_ENTRIES", "MAX_ENTRIES", "GEOMETRY", "state_shape", "init_state", "map_page",
            "unmap_page", "check")
COMPILED = ("map_page", "unmap_page")


def domain_vcpus(cfg) -> int:
    """The vCPUs a design sizes its state for: the domain's (``--domain-vcpus``, Xen's
    ``max_vcpus``), of which the first ``cfg.vcpus`` run and the others are blocked idle vCPUs."""
    d = getattr(cfg, "domain_vcpus", None)
    return cfg.vcpus if d is None else d


def validate(cfg) -> None:
    """Default: every geometry the generic checks accept is fine."""


def nested_walk(name: str, beside_hash: bool = False, note: str = "", then: str = ""):
    """The ``validate`` of a design whose vCPU holds the deepest nested walk in slots of its own.

    The rule: a vCPU's ``--entries`` (less its ``--hash`` buckets when each bucket may pin a slot
    of its own, ``beside_hash``) must hold ``irq.walk_slots(cfg)`` (PAGING_LEVELS**2, and an
    interrupt handler's slot when interrupts are on); ``--unchecked`` runs it anyway. ``note``
    follows the fix in the message, ``then`` the way past it.
    """

    def validate(cfg) -> None:
        from ..errors import UsageError
        from ..irq import walk_slots

        need, words = walk_slots(cfg)
        room = cfg.entries - (cfg.hash_entries if beside_hash else 0)
        if room >= need or cfg.unchecked:
            return
        if beside_hash:
            raise UsageError(
                f"--entries {cfg.entries} with --hash {cfg.hash_entries}: {name} needs entries - hash >= "
                f"{words} slots beside the hash for a nested walk; raise --entries to "
                f"{cfg.hash_entries + need}{note}, or pass --unchecked to run it anyway{then}")
        raise UsageError(
            f"--entries {cfg.entries}: {name} needs at least {words} slots per vCPU for a nested walk; raise "
            f"--entries to {need}{note}, or pass --unchecked to run it anyway{then}")

    validate.__doc__ = (f"{name}'s geometry: room for a nested walk"
                        + (" beside the hash" if beside_hash else "") + " (contract.nested_walk).")
    return validate


def describe_stall(views, cfg, vcpu) -> dict:
    """Default: a variant without locks has nothing to say about a stopped vCPU."""
    return {}


def lock_holder(views, cfg):
    """Default: no lock, so no holder."""
    return None


def lock_waiters(views, cfg) -> int:
    """Default: no lock, so nobody waits for it."""
    return 0


def resolve(cfg):
    """Default: the design takes its geometry from the command line."""
    return cfg


def failure_detail(cfg, row) -> str:
    """Default: a kernel status says it all."""
    return ""


def label(cfg) -> str:
    """Default: the variant's name is its label in tables."""
    return cfg.variant


def describe(cfg):
    """Default: a transcription's code is the testbed's own; nothing to record."""
    return None


def runner(cfg):
    """Default: the compiled loop, ``loops.run_ops`` (a native design gives its C loop instead)."""
    from .. import loops

    return loops.run_ops


OPTIONAL = {
    "validate": validate,
    "describe_stall": describe_stall,
    "lock_holder": lock_holder,
    "lock_waiters": lock_waiters,
    "resolve": resolve,
    "runner": runner,
    "failure_detail": failure_detail,
    "label": label,
    "describe": describe,
    "NATIVE": False,
    "LOCKS": (),
    "DOM_LAYOUTS": (),
    "IRQS_OFF": (),
}
OPERATIONS = ("map", "unmap")


class ContractError(TypeError):
    """A variant module that does not provide what the contract requires."""


def complete(module: ModuleType) -> ModuleType:
    """Check ``module`` against the contract and fill in the optional defaults; the module."""
    where = module.__name__
    required = REQUIRED if not getattr(module, "NATIVE", False) else tuple(n for n in REQUIRED if n not in COMPILED)
    missing = [name for name in required if not hasattr(module, name)]
    if missing:
        raise ContractError(f"variant module {where} lacks {', '.join(missing)} (see docs/variants.md)")
    for name in COMPILED if not getattr(module, "NATIVE", False) else ():
        if not callable(getattr(module, name)):
            raise ContractError(f"{where}.{name} must be a function compiled with testbed.jit.inline_kernel")
    for name, default in OPTIONAL.items():
        if not hasattr(module, name):
            setattr(module, name, default)
    if set(module.GEOMETRY) != {"entries", "hash", "pool"} or not all(isinstance(x, str) and x
                                                                    for x in module.GEOMETRY.values()):
        raise ContractError(f"{where}.GEOMETRY must name the source of entries, hash and pool")
    if not isinstance(module.LOCKS, tuple) or not all(isinstance(x, str) for x in module.LOCKS):
        raise ContractError(f"{where}.LOCKS must be a tuple of lock names")
    if not isinstance(module.DOM_LAYOUTS, tuple) or not all(isinstance(x, str) for x in module.DOM_LAYOUTS):
        raise ContractError(f"{where}.DOM_LAYOUTS must be a tuple of layout names")
    bad = [x for x in module.IRQS_OFF if x not in OPERATIONS]
    if bad:
        raise ContractError(f"{where}.IRQS_OFF names {bad}; the operations are {OPERATIONS}")
    return module
