"""The run options: declared once on ``config.RunConfig`` (``config.option``), turned here into
command-line options (``add_run_options``) and back into a config (``config_from``).

``testbed run``, the experiments and the sweep plans (``sweepplan.py``) all read their
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


# A time's units, in seconds: what --duration 10s, --warmup 500ms or --slack-us 0.2ms may say.
UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def duration_in(unit: str):
    """The argparse type of a time option given in ``unit``: a bare number is in ``unit``, a number
    with a unit (``10s``, ``500ms``, ``2m``) is converted to it."""
    def parse(text: str) -> float:
        t = text.strip().lower()
        number, suffix = t, ""
        for name in sorted(UNITS, key=len, reverse=True):
            if t.endswith(name) and t[:-len(name)].strip():
                number, suffix = t[:-len(name)].strip(), name
                break
        try:
            value = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a time; give a number of {unit} or one with a unit, "
                                             f"e.g. 10s, 500ms") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite time")
        return value * UNITS[suffix] / UNITS[unit] if suffix else value

    parse.__name__ = f"time in {unit}"
    return parse


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


def add_run_options(ap: argparse.ArgumentParser, vcpus: str | None = "all", variant: bool = True,
                    shown: dict | None = None, **own) -> None:
    """Every declared run option, with its help, type and default; ``own`` overrides a declared
    default for this command (e.g. ``duration=10.0, warmup=0.0``), and the help shows the value used.

    ``shown``: for an option whose default the command itself decides (left None here), the words
    its help gives for that default, e.g. ``{"domain_vcpus": "32, the seed's guest"}``."""
    from . import variants as registry

    locks = "; ".join(f"{v.name}: {', '.join(v.locks)}" for v in registry.REAL if v.locks)
    if variant:
        ap.add_argument("--variant", default=None,
                        help=f"mapcache design (see 'testbed variants'; without it, the baseline {registry.BASELINE})")
        ap.add_argument("--lock", default=None, help=f"lock of a variant that has one ({locks}; default the first)")
    else:
        ap.add_argument("--lock", dest="locks", type=_names, default=None,
                        help=f"run each variant that has a lock once per lock named, e.g. ticket,mcs,tas ({locks})")
    if vcpus is not None:
        ap.add_argument("--vcpus", type=_vcpus, default=vcpus, help="vCPU processes, or 'all' physical cores (default)")
    ap.add_argument("--seed", type=_int, default=None, help="seed for every random choice (default: from the clock)")
    words = {"domain_vcpus": "--vcpus", **(shown or {})}
    unknown = set(own) - {f.name for f in _declared()}
    if unknown:
        raise TypeError(f"add_run_options: no run option {', '.join(sorted(unknown))}")
    for f in _declared():
        m, default = f.metadata, own.get(f.name, f.default)
        flag = m["flag"] or "--" + f.name.replace("_", "-")
        if f.type == "bool":
            ap.add_argument(flag, dest=f.name, action="store_true", help=m["help"])
            continue
        unit = m.get("unit")
        kind = duration_in(unit) if unit else _float if "float" in f.type else _int if "int" in f.type else str
        said = (f" (default {words[f.name]})" if f.name in words else "" if default is None
                else f" (default {default:g} {unit})" if unit
                else f" (default {default:g})" if isinstance(default, float) else f" (default {default})")
        metavar = m["metavar"] or ("TIME" if unit else None)
        more = f"; a number of {unit}, or with a unit: 10s, 500ms" if unit else ""
        ap.add_argument(flag, dest=f.name, type=kind, default=default, metavar=metavar, help=m["help"] + more + said)
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
    from .runplan import checked

    return checked(config_from(args))


def check_writable(path: str, option: str) -> None:
    """An output file that could not be written is refused now, before anything starts (``output.check_file``)."""
    from .output import check_file

    check_file(path, option)
