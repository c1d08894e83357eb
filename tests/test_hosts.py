"""Topology, placement, memory placement and host facts, against sysfs snapshots of real machines.

The snapshots (tests/data/hwloc/, see its README) come with hwloc's own reading of each
(``lstopo -v``), which is the oracle here: every allowed CPU's core, package and node, the
allowed nodes, the distance matrix. Placement and facts are then checked on the same trees
through ``testbed placement`` under TESTBED_FSROOT, as a user would run it.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from testbed import cli, hostinfo, numa, topology

from hwloc_expect import read_console, read_xml

DATA = Path(__file__).resolve().parent / "data"
SNAPSHOTS = sorted(p.name[:-len(".tar.xz")] for p in (DATA / "hwloc").glob("*.tar.xz"))


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("hwloc")
    for name in SNAPSHOTS:
        with tarfile.open(DATA / "hwloc" / f"{name}.tar.xz") as t:
            t.extractall(base, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(base)
    return base


def expected(name):
    console = DATA / "hwloc" / f"{name}.console"
    return read_console(console) if console.exists() else read_xml(DATA / "hwloc" / f"{name}.xml")


def test_snapshots_differ_in_kind():
    """At least the five kinds the project needs: 2-socket SMT x86, 4-socket AMD, 256-CPU POWER,
    ARM with clusters, a cgroup-restricted one."""
    for need in ("32intel64-2p8co2t+8ve", "64amd64-4s2n4ca2co", "256ppc-8n8s4t", "128arm-2pa2n8cluster4co",
                 "16amd64-8n2c-cpusets", "32amd64-4s2n4c-cgroup2"):
        assert need in SNAPSHOTS


def _partition(keys: dict) -> set:
    groups: dict = {}
    for cpu, key in keys.items():
        groups.setdefault(key, set()).add(cpu)
    return {frozenset(g) for g in groups.values()}


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_topology_is_what_hwloc_says(trees, name):
    """Allowed CPUs, cores (by their threads), packages, nodes, the allowed memory nodes and the
    distance matrix are hwloc's, snapshot by snapshot.

    Mutations tried, each failing here: grouping cores by (package, core_id) instead of their
    threads (three snapshots fail); dropping the Bulldozer compute-unit quirk
    (64amd64-4s2n4ca2co); taking the allowed CPUs from this process's affinity under
    TESTBED_FSROOT (all eight fail).
    """
    want = expected(name)
    topo = topology.read_topology(str(trees / name))
    assert set(topo.allowed) == set(want.pus)
    cpus = sorted(want.pus)
    assert _partition({c: topo.cpus[c].core for c in cpus}) == _partition({c: want.pus[c]["core"] for c in cpus})
    assert _partition({c: topo.cpus[c].package for c in cpus}) == _partition(
        {c: want.pus[c]["package"] for c in cpus})
    for c in cpus:
        w = want.pus[c]
        if w["core_p"] is not None:
            assert topo.cpus[c].core_id == w["core_p"], c
        if w["package_p"] is not None:
            assert topo.cpus[c].package == w["package_p"], c
        if w["node"] is not None:
            assert topo.cpus[c].node == w["node"], c
        else:                       # hwloc hides a node whose memory the cpuset bars
            assert topo.cpus[c].node not in topo.allowed_mems, c
    assert list(topo.allowed_mems) == sorted(want.nodes)
    if want.distances is not None:
        got = [[topo.distance(a, b) for b in want.nodes] for a in want.nodes]
        assert got == want.distances


def test_restrictions_and_offline_named(trees):
    """The cpuset and the offline CPUs are said, not only applied."""
    t = topology.read_topology(str(trees / "16amd64-8n2c-cpusets"))
    assert t.restricted_by == ("cpuset /dummy",) and t.offline == (4,)
    t = topology.read_topology(str(trees / "32amd64-4s2n4c-cgroup2"))
    assert t.restricted_by == ("cpuset /uid_2008/job_15389/step_0",) and t.offline == tuple(range(32, 48))
    t = topology.read_topology(str(trees / "16em64t-4s2c2t-offlines"))
    assert t.offline == (2, 5, 13, 14) and t.nodes == (0,) and t.smt == 2


def test_relations_for_pair_finding(trees):
    """The API other commands use to pick CPU pairs: siblings, same package, across packages."""
    t = topology.read_topology(str(trees / "32intel64-2p8co2t+8ve"))
    assert t.pair("smt") == (0, 16)
    assert t.pair("package") == (0, 1)
    assert t.pair("remote") == (0, 8)
    assert t.relation(16, 24) == "remote"
    t = topology.read_topology(str(trees / "48amd64-4pa2n6c-sparse"))
    assert t.pair("smt") is None                   # no SMT: no such pair
    assert t.relation(0, 6) == "package"           # one package, two dies/nodes, same core_id 0


def placement_json(monkeypatch, capsys, root, *args) -> dict:
    monkeypatch.setenv("TESTBED_FSROOT", str(root))
    assert cli.main(["placement", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", SNAPSHOTS)
@pytest.mark.parametrize("how", ["compact", "scatter"])
def test_placement_on_snapshot(trees, monkeypatch, capsys, name, how):
    """1, half and all of the allowed cores: one vCPU per core, never outside the tree's allowed CPUs
    (never this process's), compact fills nodes in order, scatter balances them.

    Mutations tried, each failing here: scatter dealing by CPU number instead of node; compact
    taking a core's SMT siblings before the next core. (Allowed CPUs from os.sched_getaffinity
    under TESTBED_FSROOT fails test_topology_is_what_hwloc_says on every snapshot.)
    """
    topo = topology.read_topology(str(trees / name))
    cores = topo.physical_in(topo.allowed)
    nodes_with = Counter(topo.cpus[c].node for c in topo.allowed if c == min(topo.cpus[c].siblings, key=lambda x: (
        x not in topo.allowed, x)))
    for n in sorted({1, max(1, cores // 2), cores}):
        out = placement_json(monkeypatch, capsys, trees / name, "--vcpus", str(n), "--placement", how)
        rows = out["vcpus"]
        assert [r["vcpu"] for r in rows] == list(range(n))
        assert all(r["cpu"] in topo.allowed for r in rows)
        assert len({r["core"] for r in rows}) == n                 # no two vCPUs on one core
        for r in rows:
            c = topo.cpus[r["cpu"]]
            assert (r["core"], r["package"], r["node"]) == (c.core, c.package, c.node)
        used = Counter(r["node"] for r in rows)
        if how == "compact":        # nodes filled one after another: all full but the last one used
            order = [r["node"] for r in rows]
            firsts = list(dict.fromkeys(order))
            assert firsts == sorted(firsts)
            for node in firsts[:-1]:
                assert used[node] == nodes_with[node]
        else:                       # balanced: no node two vCPUs ahead of one with a core free
            for a in used:
                for b in nodes_with:
                    if used.get(b, 0) < nodes_with[b]:
                        assert used[a] <= used.get(b, 0) + 1, (a, b, used)
        if n == cores:
            assert {r["core"] for r in rows} == {topo.cpus[c].core for c in topo.allowed}


def test_given_placement_keeps_order(trees, monkeypatch, capsys):
    out = placement_json(monkeypatch, capsys, trees / "32intel64-2p8co2t+8ve", "--vcpus", "4", "--placement",
                         "given", "--cpus", "8,0,24,16")
    assert [r["cpu"] for r in out["vcpus"]] == [8, 0, 24, 16]
    assert [r["node"] for r in out["vcpus"]] == [1, 0, 1, 0]


def test_placement_refuses_a_cpu_the_cpuset_bars(trees, monkeypatch, capsys):
    """CPU 7 is online in 16amd64-8n2c-cpusets but outside its cpuset: refused, and the cpuset named."""
    monkeypatch.setenv("TESTBED_FSROOT", str(trees / "16amd64-8n2c-cpusets"))
    assert cli.main(["placement", "--cpus", "7"]) == 2
    err = capsys.readouterr().err
    assert "CPU 7" in err and "cpuset /dummy" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,env,needle", [
    (["placement", "--placement", "diagonal"], None, "unknown placement"),
    (["placement", "--placement", "given"], None, "add --cpus"),
    (["placement", "--numa-home", "9"], None, "no NUMA node 9"),
    (["placement"], "empty", "holds no sys/devices/system/cpu"),
    (["run", "--vcpus", "1"], "snapshot", "describes another machine"),
    (["run", "--vcpus", "1", "--placement", "nowhere"], None, "unknown placement"),
    (["run", "--vcpus", "1", "--numa-home", "5"], None, "no NUMA node 5"),
])
def test_bad_input_one_line_exit_2(trees, tmp_path, monkeypatch, capsys, args, env, needle):
    """Each refusal: exit 2, one line naming the problem, nothing started."""
    if env == "empty":
        monkeypatch.setenv("TESTBED_FSROOT", str(tmp_path))
    elif env == "snapshot":
        monkeypatch.setenv("TESTBED_FSROOT", str(trees / "256ppc-8n8s4t"))
    else:
        monkeypatch.delenv("TESTBED_FSROOT", raising=False)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


# --- host facts -----------------------------------------------------------------------

@pytest.mark.parametrize("name", SNAPSHOTS)
def test_host_facts_on_snapshot(trees, name):
    """Every fact has a value or says unknown; nodes and SMT agree with the topology."""
    f = hostinfo.facts(str(trees / name))
    topo = topology.read_topology(str(trees / name))
    assert f["numa"]["nodes"] == list(topo.nodes)
    assert f["smt"]["threads_per_core"] == topo.smt
    for key in ("isolcpus", "nohz_full", "randomize_va_space", "thp"):
        assert f[key] not in (None, ""), key
    for key, value in f["cpufreq"].items():
        assert value not in (None, ""), key
    assert f["virtualization"]["verdict"] in ("bare metal", "bare metal (by DMI)", "unknown") or \
        f["virtualization"]["verdict"].startswith("VM")


def test_facts_name_what_the_snapshots_hold(trees):
    """Values read from the files, and the warning they earn (one line, or none).

    Mutation tried: warning on any governor (48amd64's performance then warned); failed here.
    """
    f = hostinfo.facts(str(trees / "32amd64-4s2n4c-cgroup2"))
    assert f["cpufreq"] == {"scaling_driver": "powernow-k8", "governor": "ondemand", "boost": "unknown"}
    assert f["virtualization"]["verdict"] == "bare metal"
    assert f["restricted_by"] == ["cpuset /uid_2008/job_15389/step_0"]
    assert hostinfo.warning_line(f) == "warning: figures less comparable: CPU frequency governor ondemand, not performance"
    f = hostinfo.facts(str(trees / "48amd64-4pa2n6c-sparse"))
    assert f["cpufreq"]["governor"] == "performance" and hostinfo.warning_line(f) is None
    f = hostinfo.facts(str(trees / "32intel64-2p8co2t+8ve"))
    assert f["cpufreq"]["boost"] == "on" and f["isolcpus"] == "none" and f["smt"]["control"] == "on"
    assert "boost on" in hostinfo.warning_line(f)
    f = hostinfo.facts(str(trees / "256ppc-8n8s4t"))
    assert f["thp"] == "unknown" and f["vulnerabilities"] == "unknown"
    lines = hostinfo.header_lines(hostinfo.facts(str(trees / "32amd64-4s2n4c-cgroup2")))
    assert sum(line.startswith("warning:") for line in lines) == 1


def test_this_host_is_a_vm_and_warns_once():
    """This project's host is a VM: the facts say so and the header warns once."""
    f = hostinfo.facts()
    lines = hostinfo.header_lines(f)
    if not f["virtualization"]["verdict"].startswith("VM"):
        pytest.skip("not a VM")
    warns = [line for line in lines if line.startswith("warning:")]
    assert len(warns) == 1 and "VM" in warns[0]


def test_compare_facts_refuses_machines_flags_settings(trees):
    """diff's host comparison: another NUMA layout is refused, another governor flagged.

    Mutation tried: governor in REFUSE instead of FLAG: the flag assertion failed.
    """
    a = {"facts": hostinfo.facts(str(trees / "64amd64-4s2n4ca2co"))}
    b = {"facts": hostinfo.facts(str(trees / "32intel64-2p8co2t+8ve"))}
    refused, _ = hostinfo.compare_facts(a, b)
    assert any("numa.nodes" in r for r in refused) and any("smt.threads_per_core" in r for r in refused)
    c = json.loads(json.dumps(a))
    c["facts"]["cpufreq"]["governor"] = "powersave"
    refused, flagged = hostinfo.compare_facts(a, c)
    assert refused == [] and any("cpufreq.governor" in x for x in flagged)
    assert hostinfo.compare_facts(a, json.loads(json.dumps(a))) == ([], [])
    assert hostinfo.compare_facts({}, a)[1] == ["host facts missing from the first result"]


def _bundle(trees, name: str, rate: float, seed: int) -> dict:
    """A run result as a user on that host would send it: this host's result with that host's facts."""
    from testbed import results

    topo = topology.read_topology(str(trees / name))
    return {"schema": results.SCHEMA, "kind": "testbed.run", "variant": "lockless", "vcpus": 4, "seed": seed,
            "workload": "uniform", "config": {"variant": "lockless", "vcpus": 4, "seed": seed, "placement": "scatter"},
            "host": {"facts": hostinfo.facts(str(trees / name)), "cpu_model": "AMD Opteron(TM) Processor 6276",
                     "logical_cpus": len(topo.cpus), "physical_cores": topo.physical_cores, "kernel": "3.x",
                     "hostname": name},
            "totals": {"ops_per_s": rate}, "verdict": "SUCCESS",
            "vcpu_placement": topology.placement_rows(topo, topology.place(topo, list(topo.allowed), 4, False,
                                                                           "scatter"))}


def test_diff_reads_a_many_core_bundle(trees, tmp_path, capsys):
    """A result from a 64-CPU 8-node host is enough for diff: compared with itself, flagged on a
    governor change, refused against another machine."""
    a, b = _bundle(trees, "64amd64-4s2n4ca2co", 1e8, 1), _bundle(trees, "64amd64-4s2n4ca2co", 1.1e8, 2)
    b["host"]["facts"]["cpufreq"]["governor"] = "powersave"
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert cli.main(["diff", str(pa), str(pb)]) == 0
    out = capsys.readouterr().out
    assert "note: host cpufreq.governor" in out and " 1.100 " in out        # B/A in diff's table
    other = _bundle(trees, "32intel64-2p8co2t+8ve", 1e8, 3)
    other["host"]["cpu_model"] = a["host"]["cpu_model"]
    other["host"]["logical_cpus"], other["host"]["physical_cores"] = 64, 32
    po = tmp_path / "o.json"
    po.write_text(json.dumps(other))
    assert cli.main(["diff", str(pa), str(po)]) == 2
    assert "host numa.nodes" in capsys.readouterr().err


# --- memory placement -----------------------------------------------------------------

def test_numa_maps_parsing_on_a_recorded_two_node_host():
    """The per-node page counts of a real 2-node numa_maps (tests/data/README.md)."""
    maps = numa.parse_numa_maps((DATA / "numa_maps-2node.txt").read_text())
    assert len(maps) == 37
    first = next(m for m in maps if m["address"] == 0x7f9a5c006000)
    assert first["pages"] == {0: 419, 1: 213} and first["policy"] == "default" and first["page_kib"] == 4
    libc = next(m for m in maps if m["address"] == 0x7f9a8665e000)
    assert libc["file"] == "/lib/x86_64-linux-gnu/libc-2.23.so" and libc["pages"] == {0: 242}
    assert sum(m["pages"].get(1, 0) for m in maps) == 213 + 19 + 30 + 1 + 2 + 308 + 6 + 3 + 62
    assert next(m for m in maps if m["address"] == 0x7f9a5eb4c000)["pages"] == {1: 2}


def test_arena_binding_read_back_on_this_host():
    """Bind a page-rowed arena as a run does, through libnuma, and read every region back with
    move_pages: each vCPU's rows on pages of their own, every page where asked.

    Mutation tried: Field.padded_shape ignoring ``align`` (rows padded to a cache line only): two
    vCPUs' rows then shared a page and the no-shared-page assertion failed.
    """
    from testbed.config import RunConfig, validate
    from testbed.harness import build_layout
    from testbed.shared import Arena

    if numa.libnuma() is None:
        pytest.skip("no libnuma on this host")
    cfg = validate(RunConfig(variant="lockless", vcpus=2, frames=64))
    topo = topology.host_topology()
    cores = topology.place(topo, list(topo.allowed), 2, True)
    layout = build_layout(cfg, page_rows=True)
    arena = Arena.create(layout)
    try:
        plan = numa.Plan(cfg, topo, cores).build(arena.views, layout, cfg.entries)
        pages = {}
        for name, spans, _ in plan.regions:
            if name.startswith("vcpu"):
                for addr, size in spans:
                    for p in numa._pages(addr, addr + size):
                        assert pages.setdefault(p, name) == name, "two vCPUs' rows share a page"
        plan.one_node = False           # bind even on one node: the calls themselves are tested
        assert plan.apply() == "bound"
        arena.views["frames"][:] = 1
        back = numa.read_back(plan, numa.touch_reader(arena.views))
        assert back["source"] == "move_pages" and back["misplaced"] == []
        node = str(topo.allowed_mems[0])
        assert set(back["domain"]["pages"]) == {node} and set(back["frames"]["pages"]) == {node}
        assert all(set(v["pages"]) == {node} for v in back["vcpus"])
    finally:
        arena.destroy()


def test_misplaced_pages_are_named():
    """A region whose pages sit off its node is named (the read-back is checked, not trusted)."""
    back = {"allowed_mems": [0, 1], "domain": {"requested": 1, "pages": {"0": 3}},
            "frames": {"requested": "interleave", "pages": {"0": 5, "1": 5}},
            "vcpus": [{"vcpu": 0, "requested": 0, "pages": {"0": 4}}, {"vcpu": 1, "requested": 1, "pages": {"0": 4}}]}
    assert numa.misplaced(back) == ["domain", "vCPU 1"]


def test_placement_records_exist_on_one_node(monkeypatch, capsys):
    """On this (one-node) host the NUMA options are taken and said to change nothing."""
    monkeypatch.delenv("TESTBED_FSROOT", raising=False)
    topo = topology.host_topology()
    if len(topo.allowed_mems) != 1:
        pytest.skip("host has several memory nodes")
    assert not numa.spans_nodes(topo)
    assert cli.main(["placement", "--vcpus", "1", "--numa-home", str(topo.nodes[0])]) == 0
    assert f"node {topo.nodes[0]}" in capsys.readouterr().out
    assert os.environ.get("TESTBED_FSROOT") is None


# --- a run on this host, and its rerun --------------------------------------------------

def test_rerun_never_writes_over(tmp_path, monkeypatch):
    """The rerun's command writes to new files only, and refuses a result with no command.

    Mutation tried: rerun_argv keeping --json as recorded: the first assertion failed.
    """
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "a.csv").write_text("")
    argv = ["run", "--vcpus", "2", "--json", "a.json", "--csv", "a.csv", "--seed", "5"]
    new = cli.rerun_argv(argv, cli._fresh_path("a.json"))
    assert new == ["run", "--vcpus", "2", "--json", "a.rerun.json", "--csv", "a.rerun.csv", "--seed", "5"]
    (tmp_path / "a.rerun.json").write_text("{}")
    assert cli._fresh_path("a.json") == "a.rerun2.json"
    assert cli.rerun_argv(["run"], "b.json") == ["run", "--json", "b.json"]
    from testbed import results

    old = {"schema": results.SCHEMA, "kind": "testbed.run"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert cli.main(["rerun", "old.json"]) == 2


def test_run_records_placement_memory_facts_and_reruns(tmp_path, trees, capsys, exclusive, warm_kernels,
                                                       no_leftovers):
    """A run records where its vCPUs ran, where its memory is, the host facts and its command; the
    header warns once (this host is a VM); 'testbed rerun' runs the command into a new file and
    says what differs. The same result, given a 64-CPU host's facts, is enough for report and diff.
    (The rerun's file handling has its own test and mutation: test_rerun_never_writes_over.)
    """
    from conftest import REPO, testbed_cli

    env = {"PYTHONPATH": str(REPO)}           # this checkout's testbed, from any folder
    out = testbed_cli("run", "--variant", "directmap", "--vcpus", "2", "--duration", "0.5", "--warmup", "0",
                      "--quiet", "--placement", "scatter", "--frames-numa", "home", "--json", "a.json", cwd=tmp_path,
                      env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "a.json").read_text())
    topo = topology.host_topology()
    assert [r["cpu"] for r in res["vcpu_placement"]] == res["placement"]
    assert all(r["node"] == topo.cpus[r["cpu"]].node for r in res["vcpu_placement"])
    mem = res["memory_placement"]
    assert mem["source"] == "move_pages" and mem["misplaced"] == []
    assert [v["vcpu"] for v in mem["vcpus"]] == [0, 1] and all(v["pages"] for v in mem["vcpus"])
    assert mem["frames"]["requested"] == mem["requested"]["home"]
    assert res["host"]["facts"]["numa"]["nodes"] == list(topo.nodes)
    assert "--seed" in res["command"]["argv"] and res["command"]["argv"][:2] == ["testbed", "run"]
    warns = [line for line in out.stdout.splitlines() if line.startswith("warning:")]
    if res["host"]["facts"]["virtualization"]["verdict"].startswith("VM"):
        assert len(warns) == 1 and "VM" in warns[0]
    if len(topo.allowed_mems) == 1:
        assert "change nothing" in out.stdout
    assert "memory (read back, move_pages)" in out.stdout

    again = testbed_cli("rerun", "a.json", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    new = json.loads((tmp_path / "a.rerun.json").read_text())
    old = json.loads((tmp_path / "a.json").read_text())
    assert old == res                                   # never written over
    assert new["seed"] == res["seed"] and new["config"] == res["config"]
    assert "rerun: host facts as in the original" in again.stdout and "rerun: B/A = " in again.stdout
    lines = again.stdout.rstrip("\n").splitlines()       # the rerun's verdict, held back, closes its output
    assert lines[-1].startswith("verdict: SUCCESS") and sum(x.startswith("verdict: ") for x in lines) == 1

    bundle = json.loads(json.dumps(res))               # as a user's 64-CPU host would send it
    bundle["host"]["facts"] = hostinfo.facts(str(trees / "64amd64-4s2n4ca2co"))
    bundle["host"].update(hostname="c6145", cpu_model="AMD Opteron(TM) Processor 6276", logical_cpus=64,
                          physical_cores=64)
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(bundle))
    assert cli.main(["report", str(folder)]) == 0
    csv_text = (folder / "report.csv").read_text()
    assert "host_numa_nodes" in csv_text and "0,1,2,3,4,5,6,7" in csv_text
    (folder / "twin.json").write_text(json.dumps(bundle))
    assert cli.main(["diff", str(folder / "run.json"), str(folder / "twin.json")]) == 0
    assert "B/A from 1.000 to 1.000" in capsys.readouterr().out     # the same run on the same host
