"""The run options: declared once on ``config.RunConfig`` (``config.option``), turned here into
command-line options (``add_run_options``) and back into a config (``config_from``).

``testbed run``, the experiments and the sweep plans (``sweep.py``) all read their
run options through these two functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from .errors import UsageError


def one_line(text: str) -> str:
    """User text may hold line breaks or control characters: keep an error message on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of vCPU counts, e.g. 1,2,4") from None
    if counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every vCPU count must be at least 1")
    return counts


def sweep_arg(text: str):
    """compare --sweep OPTION=v1,v2,...: (option, values), or an argparse error naming what is wrong."""
    from .experiments import parse_sweep

    try:
        return parse_sweep(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--sweep ")) from None


def _vcpus(text: str):
    return text if text == "all" else _int(text)


def _names(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give a comma-separated list, e.g. ticket,mcs")
    return names


def _declared():
    """The run options declared on ``RunConfig`` (config.option) that are command-line options."""
    from .config import RunConfig

    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("cli")]


def add_run_options(ap: argparse.ArgumentParser, duration: float = 3.0, workload: str = "uniform",
                    vcpus: str | None = "all", variant: bool = True, shown: dict | None = None) -> None:
    """Every declared run option, with its help, type and default; a command's own defaults override.

    ``shown``: for an option whose default the command itself decides (left None here), the words
    its help gives for that default, e.g. ``{"domain_vcpus": "32, the seed's guest"}``."""
    from . import variants as registry

    locks = "; ".join(f"{v.name}: {', '.join(v.locks)}" for v in registry.REAL if v.locks)
    if variant:
        ap.add_argument("--variant", default=registry.BASELINE, help="mapcache design (see 'testbed variants')")
        ap.add_argument("--lock", default=None, help=f"lock of a variant that has one ({locks}; default the first)")
    else:
        ap.add_argument("--lock", dest="locks", type=_names, default=None,
                        help=f"run each variant that has a lock once per lock named, e.g. ticket,mcs,tas ({locks})")
    if vcpus is not None:
        ap.add_argument("--vcpus", type=_vcpus, default=vcpus, help="vCPU processes, or 'all' physical cores (default)")
    ap.add_argument("--seed", type=_int, default=None, help="seed for every random choice (default: from the clock)")
    own = {"duration": duration, "workload": workload}
    words = {"domain_vcpus": "--vcpus", **(shown or {})}
    for f in _declared():
        m, default = f.metadata, own.get(f.name, f.default)
        flag = m["flag"] or "--" + f.name.replace("_", "-")
        if f.type == "bool":
            ap.add_argument(flag, dest=f.name, action="store_true", help=m["help"])
            continue
        kind = _float if "float" in f.type else _int if "int" in f.type else str
        said = (f" (default {words[f.name]})" if f.name in words else "" if default is None
                else f" (default {default:g})" if isinstance(default, float) else f" (default {default})")
        ap.add_argument(flag, dest=f.name, type=kind, default=default, metavar=m["metavar"], help=m["help"] + said)
    ap.add_argument("--xen-patch", dest="xen_patch", action="append", default=None, metavar="FILE",
                    help="--variant xen: a patch to apply to --xen-tree first, as mailed (repeatable)")
    ap.add_argument("--no-cost", action="store_true", help="turn the TLB cost model off")


def config_from(args):
    """The (unvalidated) RunConfig of parsed run options; a seed drawn from the clock is kept in ``args``."""
    from . import variants as registry
    from .config import RunConfig
    from .topology import allowed_cpus, host_topology

    vcpus = getattr(args, "vcpus", "all")
    if getattr(args, "vcpus_multi", None) is not None:
        vcpus = args.vcpus_multi
    elif getattr(args, "vcpu_list", None):
        vcpus = max(args.vcpu_list)
    if vcpus == "all":
        topo = host_topology()
        vcpus = topo.physical_in(allowed_cpus(topo, args.cpus))
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed {args.seed}: must be 0 or more")
    if args.seed is None:
        args.seed = int(time.time_ns() % 1_000_000_007)   # the same for the whole command
    fields = {f.name: getattr(args, f.name) for f in _declared()}
    if args.no_cost:
        fields.update(cost_flush_one=0, cost_flush_all=0, cost_walk=0, cost_refill=0, cost_invpcid=0)
    fields["xen_patches"] = tuple(getattr(args, "xen_patch", None) or ())
    variant = getattr(args, "variant", None) or registry.BASELINE
    if variant.startswith("xen:"):            # the short spelling: xen:TREE+PATCH
        spelled = registry.spec_fields(variant)
        variant = spelled.pop("variant")
        fields.update(xen_tree=spelled["xen_tree"], xen_patches=spelled["xen_patches"] + fields["xen_patches"])
    return RunConfig(variant=variant, lock=getattr(args, "lock", None), vcpus=vcpus, seed=args.seed, **fields)


def checked_config(args):
    """The validated config, with its vCPU placement checked too: nothing has started yet."""
    from .config import checked

    return checked(config_from(args))


def check_writable(path: str, option: str) -> None:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: folder {folder} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: folder {folder} is not writable; write elsewhere")
