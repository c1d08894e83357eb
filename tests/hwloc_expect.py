"""What hwloc says a snapshot's topology is: readers of its ``lstopo -v`` console and XML outputs.

Both give, per allowed PU, its Core (object and P#), its Package (object and P#, None where
hwloc shows none) and its NUMA node (None where the node's memory is not allowed), the
allowed NUMA nodes in hwloc's logical order, and the distance matrix between them.
"""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

_UID = itertools.count()      # objects' identities (id() is reused once an object is freed)
_LINE = re.compile(r"^(\s*)(\S+) L#(\d+)(?: \((.*))?$")


@dataclass
class Expected:
    pus: dict = field(default_factory=dict)        # PU P# -> {"core", "core_p", "package", "package_p", "node"}
    nodes: list = field(default_factory=list)      # NUMA node P#, hwloc's logical order
    distances: list | None = None                  # rows in the order of ``nodes``


def _walk_pu(stack, pu_p, out: Expected) -> None:
    rec = {"core": None, "core_p": None, "package": None, "package_p": None, "node": None}
    for obj in reversed(stack):
        if obj["type"] == "Core" and rec["core"] is None:
            rec["core"], rec["core_p"] = obj["uid"], obj["p"]
        if obj["type"] == "Package" and rec["package"] is None:
            rec["package"], rec["package_p"] = obj["uid"], obj["p"]
        if rec["node"] is None and len(obj["nodes"]) == 1:
            rec["node"] = obj["nodes"][0]
    out.pus[pu_p] = rec


def read_console(path) -> Expected:
    out = Expected()
    stack: list[dict] = []
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Machine"):
            stack = [{"indent": 0, "type": "Machine", "p": 0, "nodes": []}]
            continue
        m = _LINE.match(line)
        if m:
            indent, kind, rest = len(m.group(1)), m.group(2), m.group(4) or ""
            p = re.match(r"P#(\d+)", rest)
            obj = {"indent": indent, "type": kind, "p": int(p.group(1)) if p else None, "nodes": [], "uid": next(_UID)}
            while stack and stack[-1]["indent"] >= indent:
                stack.pop()
            if kind == "NUMANode":
                stack[-1]["nodes"].append(obj["p"])
                out.nodes.append(obj["p"])
                continue
            stack.append(obj)
            if kind == "PU":
                _walk_pu(stack[:-1], obj["p"], out)
        elif line.startswith("Relative latency matrix") and "NUMANodes" in line:
            rows = []
            for row in lines[i + 2:i + 2 + len(out.nodes)]:
                rows.append([int(x) for x in row.split()[1:]])
            out.distances = rows
    return out


def read_xml(path) -> Expected:
    out = Expected()
    root = ET.parse(path).getroot()

    def visit(elem, stack):
        obj = {"type": elem.get("type"), "p": int(elem.get("os_index")) if elem.get("os_index") else None,
               "nodes": [], "uid": next(_UID)}
        for child in elem.findall("object"):
            if child.get("type") == "NUMANode":
                obj["nodes"].append(int(child.get("os_index")))
                out.nodes.append(int(child.get("os_index")))
        for child in elem.findall("object"):
            if child.get("type") == "NUMANode":
                continue
            if child.get("type") == "PU":
                _walk_pu(stack + [obj], int(child.get("os_index")), out)
            else:
                visit(child, stack + [obj])

    visit(root.find("object"), [])
    d = root.find("distances2")
    if d is not None:
        order = [int(x) for x in d.find("indexes").text.split()]
        values = [int(x) for v in d.findall("u64values") for x in v.text.split()]
        n = len(order)
        full = {order[i]: values[i * n:(i + 1) * n] for i in range(n)}
        out.distances = [[full[a][order.index(b)] for b in out.nodes] for a in out.nodes]
    return out
