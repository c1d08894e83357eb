"""What a result needs to say about the machine it came from (docs/variants.md, conventions 8)."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .timing import tsc_hz
from .topology import cpuinfo_first, format_cpu_list, host_topology

PACKAGES = ("testbed", "numpy", "numba", "llvmlite", "multiprocess", "psutil")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    rev = out.stdout.strip()
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5)
    return rev + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


UNKNOWN = "unknown"
# DMI sys_vendor / product_name of virtual machines, as systemd-detect-virt's dmi_vendor_table
# (systemd src/basic/virt.c) names them.
DMI_VMS = (("KVM", "KVM"), ("QEMU", "QEMU"), ("VMware", "VMware"), ("VMW", "VMware"), ("innotek GmbH", "VirtualBox"),
           ("VirtualBox", "VirtualBox"), ("Xen", "Xen"), ("Bochs", "Bochs"), ("Parallels", "Parallels"),
           ("BHYVE", "bhyve"), ("Hyper-V", "Hyper-V"), ("Amazon EC2", "Amazon EC2"), ("Google Compute Engine", "GCE"),
           ("OpenStack", "OpenStack"), ("Apple Virtualization", "Apple"), ("Virtual Machine", "Hyper-V"))


def _first_cpu_file(tree, topo, name: str) -> str | None:
    for cpu in sorted(topo.cpus):
        text = tree.text(f"sys/devices/system/cpu/cpu{cpu}/cpufreq/{name}")
        if text is not None:
            return text
    return None


def _governors(tree, topo) -> str:
    seen = sorted({g for g in (tree.text(f"sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")
                               for c in sorted(topo.cpus)) if g})
    return ",".join(seen) if seen else UNKNOWN


def _boost(tree) -> str:
    """On, off or unknown: cpufreq/boost (acpi-cpufreq, amd-pstate), else intel_pstate/no_turbo."""
    text = tree.text("sys/devices/system/cpu/cpufreq/boost")
    if text in ("0", "1"):
        return "on" if text == "1" else "off"
    text = tree.text("sys/devices/system/cpu/intel_pstate/no_turbo")
    if text in ("0", "1"):
        return "off" if text == "1" else "on"
    return UNKNOWN


def _virtualization(tree) -> dict:
    """The CPUID hypervisor bit (CPUID.1:ECX[31], the kernel's "hypervisor" cpuinfo flag) and DMI."""
    info = cpuinfo_first(tree)
    flags = info.get("flags")
    bit = UNKNOWN if flags is None else ("hypervisor" in flags.split())
    vendor = tree.text("sys/class/dmi/id/sys_vendor")
    product = tree.text("sys/class/dmi/id/product_name")
    dmi = " ".join(x for x in (vendor, product) if x) or None
    named = next((vm for key, vm in DMI_VMS if dmi and key.lower() in dmi.lower()), None)
    xen = tree.text("sys/hypervisor/type")
    if bit is True or named or xen:
        verdict = f"VM ({named or xen or 'CPUID hypervisor bit set'})"
    elif dmi and bit in (False, UNKNOWN):
        verdict = "bare metal" if bit is False else "bare metal (by DMI)"
    else:
        verdict = UNKNOWN
    return {"cpuid_hypervisor_bit": bit, "dmi": dmi if dmi else UNKNOWN, "hypervisor_type": xen or UNKNOWN,
            "verdict": verdict}


def _cmdline_param(tree, key: str) -> str | None:
    for word in (tree.text("proc/cmdline") or "").split():
        if word.startswith(key + "="):
            return word.split("=", 1)[1]
    return None


def _thp(tree) -> str:
    text = tree.text("sys/kernel/mm/transparent_hugepage/enabled")
    if not text:
        return UNKNOWN
    picked = [w[1:-1] for w in text.split() if w.startswith("[")]
    return picked[0] if picked else text


def facts(root: str | None = None) -> dict:
    """What decides whether two figures may be compared, read from the host (or a TESTBED_FSROOT tree);
    each value as the kernel says it, or "unknown"."""
    from .topology import Tree, read_topology

    tree = Tree(root)
    topo = read_topology(tree.root)
    vuln_dir = "sys/devices/system/cpu/vulnerabilities"
    vulns = {name: tree.text(f"{vuln_dir}/{name}") or UNKNOWN for name in sorted(tree.listdir(vuln_dir))}
    smt_control = tree.text("sys/devices/system/cpu/smt/control")
    isolated = tree.text("sys/devices/system/cpu/isolated")
    nohz = tree.text("sys/devices/system/cpu/nohz_full")
    aslr = tree.text("proc/sys/kernel/randomize_va_space")
    return {
        "numa": {"nodes": list(topo.nodes), "distances": topo.summary()["distances"] or UNKNOWN,
                 "node_cpus": topo.summary()["node_cpus"]},
        "packages": len(topo.packages),
        "smt": {"threads_per_core": topo.smt, "control": smt_control or UNKNOWN},
        "cpufreq": {"scaling_driver": _first_cpu_file(tree, topo, "scaling_driver") or UNKNOWN,
                    "governor": _governors(tree, topo), "boost": _boost(tree)},
        "virtualization": _virtualization(tree),
        "vulnerabilities": vulns or UNKNOWN,
        "isolcpus": (isolated if isolated is not None else _cmdline_param(tree, "isolcpus")) or
                    ("none" if isolated is not None else UNKNOWN),
        "nohz_full": nohz or ("none" if nohz is not None else (_cmdline_param(tree, "nohz_full") or UNKNOWN)),
        "randomize_va_space": aslr if aslr is not None else UNKNOWN,
        "thp": _thp(tree),
        "offline_cpus": format_cpu_list(topo.offline) or "none",
        "restricted_by": list(topo.restricted_by) or "none",
    }


def warnings(f: dict) -> list[str]:
    """What in the facts makes figures less comparable: a VM, a governor other than performance, boost on.

    lockhammer (ARM-software/synchronization-benchmarks, benchmarks/lockhammer) likewise refuses
    an unknown frequency driver unless told otherwise; here the run goes on, said once.
    """
    out = []
    virt = f["virtualization"]["verdict"]
    if virt.startswith("VM"):
        out.append(f"runs in a {virt} (steal time and the host's scheduling shift figures)")
    gov = f["cpufreq"]["governor"]
    if gov != UNKNOWN and gov != "performance":
        out.append(f"CPU frequency governor {gov}, not performance")
    if f["cpufreq"]["boost"] == "on":
        out.append("frequency boost on (clock depends on load and temperature)")
    return out


def warning_line(f: dict) -> str | None:
    why = warnings(f)
    return f"warning: figures less comparable: {'; '.join(why)}" if why else None


def header_lines(f: dict) -> list[str]:
    """The host facts for a command's header: a few lines, then at most one warning line."""
    numa = f["numa"]
    dist = numa["distances"]
    if isinstance(dist, dict):
        dist = " ".join("/".join(str(x) for x in row) for row in dist.values())
    cf, virt = f["cpufreq"], f["virtualization"]
    vulns = f["vulnerabilities"]
    mitig = UNKNOWN if vulns == UNKNOWN else (
        f"{sum(1 for v in vulns.values() if v.startswith('Vulnerable'))} vulnerable, "
        f"{sum(1 for v in vulns.values() if v.startswith('Mitigation'))} mitigated of {len(vulns)}")
    lines = [f"host: {len(numa['nodes'])} NUMA node(s) {','.join(map(str, numa['nodes']))} (distances {dist}), "
             f"{f['packages']} package(s), SMT {f['smt']['threads_per_core']} thread(s)/core "
             f"(control {f['smt']['control']})",
             f"host: cpufreq driver {cf['scaling_driver']}, governor {cf['governor']}, boost {cf['boost']}; "
             f"{virt['verdict']} (CPUID hypervisor bit {virt['cpuid_hypervisor_bit']}, DMI {virt['dmi']})",
             f"host: vulnerabilities {mitig}; isolcpus {f['isolcpus']}, nohz_full {f['nohz_full']}; "
             f"randomize_va_space {f['randomize_va_space']}; THP {f['thp']}"]
    w = warning_line(f)
    return lines + ([w] if w else [])


# Facts whose difference makes two figures measure different machines: refused by diff.
REFUSE = (("numa", "nodes"), ("numa", "distances"), ("smt", "threads_per_core"), ("virtualization", "verdict"))
# Facts whose difference moves figures: flagged.
FLAG = (("cpufreq", "scaling_driver"), ("cpufreq", "governor"), ("cpufreq", "boost"), ("smt", "control"),
        ("vulnerabilities",), ("isolcpus",), ("nohz_full",), ("randomize_va_space",), ("thp",), ("restricted_by",))


def _get(d: dict, path):
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def compare_facts(a: dict, b: dict) -> tuple[list[str], list[str]]:
    """(refusals, flags) between two results' host facts (``result["host"]["facts"]``).

    A refusal is a difference of machine (NUMA nodes or distances, SMT, VM or not); a flag one of
    settings that move figures (frequency driver, governor, boost, mitigations, isolated CPUs,
    ASLR, THP, cpuset). A result without facts (older schema) is flagged once, never refused.
    """
    fa, fb = (a or {}).get("facts"), (b or {}).get("facts")
    if not fa or not fb:
        return [], ["host facts missing from " + ("both results" if not fa and not fb else
                                                  "the first result" if not fa else "the second result")]
    refuse, flag = [], []
    for paths, out in ((REFUSE, refuse), (FLAG, flag)):
        for path in paths:
            va, vb = _get(fa, path), _get(fb, path)
            if va != vb:
                if isinstance(va, dict) and isinstance(vb, dict):
                    keys = [k for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
                    out.append(f"host {'.'.join(path)} ({', '.join(f'{k}: {va.get(k)} vs {vb.get(k)}' for k in keys)})")
                else:
                    out.append(f"host {'.'.join(path)} ({va} vs {vb})")
    return refuse, flag


def flat_facts(f: dict) -> dict:
    """The facts as flat columns (report's CSV): numa_nodes, numa_distances, smt_threads_per_core, ..."""
    out = {}
    for key, value in f.items():
        if key == "vulnerabilities" and isinstance(value, dict):
            out["vulnerable"] = ",".join(k for k, v in value.items() if v.startswith("Vulnerable")) or "none"
        elif isinstance(value, dict):
            for sub, v in value.items():
                out[f"{key}_{sub}"] = json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else v
        elif isinstance(value, list):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = value
    return out


@functools.lru_cache(maxsize=1)
def host() -> dict:
    topo = host_topology()
    logical = len(topo.online)
    physical = topo.physical_cores
    return {
        "facts": facts(),
        "cpu_model": _cpu_model(),
        "logical_cpus": logical,
        "physical_cores": physical,
        "smt": logical > physical,
        "affinity": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in PACKAGES},
        "git_revision": git_revision(),
        "tsc_hz": round(tsc_hz()),
    }
