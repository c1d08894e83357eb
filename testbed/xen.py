"""A Xen tree's own ``xen/arch/x86/domain_page.c``, patched, built against the shim, loaded.

``build(tree, patches)`` copies the tree's ``domain_page.c`` and the two headers the mapcache
is defined in (``domain.h``, ``config.h``: under ``xen/include/asm-x86/`` before Xen 4.17,
``xen/arch/x86/include/asm/`` since) into a temporary directory, applies each patch there as
mailed (text before the first ``diff --git`` is the mail; hunks for files the testbed does not
build, such as the seed's ``domain.c``, are skipped and listed), extracts from the headers by
parsing the struct definitions and sizing constants the file is written against
(``struct mapcache_vcpu``, ``struct mapcache_domain``, ``MAPHASH_*``, ``MAPCACHE_VCPU_ENTRIES``,
``MAPCACHE_ENTRIES``, the ``mapcache`` members of ``struct pv_vcpu`` and ``pv_domain``), and
compiles one translation unit: the port's loop (``csrc/testbed_op.c`` with ``TESTBED_XEN``),
the shim (``csrc/xen/shim.h``: what it maps and what it stubs), the parsed header, the Xen file
and the glue (``csrc/xen/glue.c``). The shared object is cached under the testbed's cache
directory by the hash of every input (the patched files, the shim and port sources, the
compiler and its flags), so a second run of the same tree and patches compiles nothing.

Every way this can fail is a ``UsageError`` of one line: not a Xen tree, a patch that does not
apply (naming its hunk), the first compiler error (file and line in the user's terms), no C
compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from . import native
from .native import compiler, compiler_version

CSRC = Path(__file__).resolve().parent / "csrc"
SHIM_FILES = ("xen/shim.h", "xen/shim_sched.h", "xen/glue.c")     # with native.port_sources(): the port
CFLAGS = ("-O2", "-march=native", "-fPIC", "-shared", "-fno-semantic-interposition", "-fno-strict-aliasing",
          "-w", "-Wfatal-errors")
DOMAIN_PAGE = "xen/arch/x86/domain_page.c"
HEADER_DIRS = ("xen/include/asm-x86", "xen/arch/x86/include/asm")      # before Xen 4.17, since
STRUCTS = ("mapcache_domain", "mapcache_vcpu")


@dataclass
class Build:
    """One tree plus patches, built: what a result records and what the variant loads."""
    tree: str
    patches: tuple
    label: str
    commit: str | None
    files: dict                      # tree-relative path -> sha256 of the file as read
    patch_hashes: dict               # patch path -> sha256
    skipped: list                    # (patch, file) hunks skipped: files the testbed does not build
    key: str
    dir: str                         # the cache directory: lib.so, the patched sources
    structs: dict = field(default_factory=dict)   # struct -> [(member, offset, size, elem, pointer)]
    consts: dict = field(default_factory=dict)    # MAPCACHE_VCPU_ENTRIES, MAPHASH_ENTRIES, ...
    build_bugs: list = field(default_factory=list)  # BUILD_BUG_ONs that failed at init (Xen's build would stop)
    _lib: object = None

    @property
    def lib(self):
        if self._lib is None:
            self._lib = _load(os.path.join(self.dir, "lib.so"))
        return self._lib

    def source_line(self, line: int) -> str:
        """Line ``line`` of the patched domain_page.c, stripped."""
        try:
            text = Path(self.dir, "tree", DOMAIN_PAGE).read_text(errors="replace").splitlines()
            return text[line - 1].strip() if 0 < line <= len(text) else ""
        except OSError:
            return ""

    def record(self) -> dict:
        """What a result carries about the code it ran."""
        return {"tree": self.tree, "commit": self.commit, "label": self.label, "files": self.files,
                "patches": self.patch_hashes, "skipped_hunks": [f"{p}: {f}" for p, f in self.skipped],
                "build": self.key, "consts": self.consts, "build_bug_on_failed": self.build_bugs}


_BUILDS: dict = {}


def cache_root() -> str:
    base = os.environ.get("TESTBED_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "testbed")
    return os.path.join(base, "xen")


def resolve(tree: str) -> str:
    """The tree's absolute path (``~`` expanded), or UsageError if it holds no domain_page.c."""
    path = os.path.abspath(os.path.expanduser(tree))
    if not os.path.isfile(os.path.join(path, DOMAIN_PAGE)):
        raise UsageError(f"--xen-tree {tree}: not a Xen tree (no {DOMAIN_PAGE} there); point it at the top of a "
                         "Xen checkout, e.g. ~/xen")
    return path


def header_dir(path: str) -> str:
    for d in HEADER_DIRS:
        if os.path.isfile(os.path.join(path, d, "domain.h")) and os.path.isfile(os.path.join(path, d, "config.h")):
            return d
    raise UsageError(f"--xen-tree {path}: no domain.h and config.h under {' or '.join(HEADER_DIRS)}; "
                     "the mapcache's structs and constants are read from there")


def git_commit(path: str) -> str | None:
    if not os.path.exists(os.path.join(path, ".git")) or not shutil.which("git"):
        return None
    out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def label(commit: str | None, dp_hash: str, patches) -> str:
    """``xen(af01d33+seed)``: the commit's (else domain_page.c's hash's) first 7 digits, each patch's stem."""
    stems = []
    for p in patches:
        stem = Path(p).name
        for suffix in (".patch", ".diff", ".txt"):
            stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
        stems.append("seed" if stem == "per-vcpu-mapcache-patch" else stem)
    return f"xen({(commit or dp_hash)[:7]}{''.join('+' + s for s in stems)})"


def build(tree: str, patches=()) -> Build:
    """The tree with ``patches`` applied, compiled (or found in the cache); UsageError on bad input."""
    path = resolve(tree)
    hdir = header_dir(path)
    wanted = (DOMAIN_PAGE, f"{hdir}/domain.h", f"{hdir}/config.h")
    patches = tuple(os.path.abspath(os.path.expanduser(p)) for p in patches)
    memo = (path, patches, tuple(os.stat(os.path.join(path, w)).st_mtime_ns for w in wanted),
            tuple(os.stat(p).st_mtime_ns if os.path.exists(p) else 0 for p in patches))
    if memo in _BUILDS:
        return _BUILDS[memo]
    originals = {w: Path(path, w).read_bytes() for w in wanted}
    texts = {}
    for p in patches:
        try:
            texts[p] = Path(p).read_bytes()
        except OSError as e:
            raise UsageError(f"--xen-patch {p}: cannot read it ({e.strerror})") from None
    cc = compiler()
    if cc is None:
        raise UsageError("the xen variant compiles the tree's domain_page.c, and no C compiler was found "
                         "(looked for $CC, cc, gcc, clang): install one, e.g. apt-get install gcc")
    with tempfile.TemporaryDirectory(prefix="testbed-xen-") as tmp:
        work = Path(tmp, "tree")
        for w, data in originals.items():
            Path(work, w).parent.mkdir(parents=True, exist_ok=True)
            Path(work, w).write_bytes(data)
        skipped = []
        for p in patches:
            skipped += [(p, f) for f in apply_patch(p, texts[p], work, wanted)]
        patched = {w: Path(work, w).read_text(errors="replace") for w in wanted}
        generated = tree_header(patched[f"{hdir}/domain.h"], patched[f"{hdir}/config.h"], patched[DOMAIN_PAGE])
        shim = {**native.port_sources(), **{f: (CSRC / f).read_bytes() for f in SHIM_FILES}}
        h = hashlib.sha256()
        for name, data in [*sorted(patched.items()), ("xen_tree.h", generated), *sorted(shim.items())]:
            h.update(name.encode() + b"\0" + (data if isinstance(data, bytes) else data.encode()) + b"\0")
        h.update(compiler_version(cc).encode() + " ".join(CFLAGS).encode())
        key = h.hexdigest()[:20]
        out = os.path.join(cache_root(), key)
        if not os.path.isfile(os.path.join(out, "lib.so")):
            _compile(cc, work, generated, patched[DOMAIN_PAGE], tmp, out)
    commit = git_commit(path)
    dp_hash = _sha(originals[DOMAIN_PAGE])
    b = Build(tree=path, patches=patches, label=label(commit, dp_hash, patches), commit=commit,
              files={w: _sha(d) for w, d in originals.items()}, patch_hashes={p: _sha(t) for p, t in texts.items()},
              skipped=skipped, key=key, dir=out)
    b.structs = _fields(b.lib)
    b.consts = {name: int(getattr(b.lib, f"testbed_xen_{name.lower()}")()) for name in CONSTS}
    _BUILDS[memo] = b
    return b


CONSTS = ("MAPCACHE_VCPU_ENTRIES", "MAPHASH_ENTRIES", "MAPCACHE_ENTRIES")


# --- patches ---------------------------------------------------------------------------------
_DIFF = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.M)
_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@", re.M)


def patch_body(text: str) -> str:
    """The patch of a mail: from its first ``diff --git`` line (or ``--- a/``) to its end."""
    m = _DIFF.search(text) or re.search(r"^--- a/", text, re.M)
    return text[m.start():] if m else ""


def apply_patch(name: str, data: bytes, work: Path, wanted) -> list[str]:
    """Apply the hunks of ``name`` for ``wanted`` files in ``work``; the other files it touches (skipped)."""
    text = patch_body(data.decode(errors="replace"))
    files = list(dict.fromkeys(m.group(2) for m in _DIFF.finditer(text)))
    if not text or not files:
        raise UsageError(f"--xen-patch {name}: no 'diff --git' in it; give a patch as git format-patch or "
                         "git diff writes it")
    skipped = [f for f in files if f not in wanted]
    if len(skipped) == len(files):
        return skipped
    if not shutil.which("git"):
        raise UsageError(f"--xen-patch {name}: applying a patch needs git (git apply); install git")
    args = ["git", "apply", "--whitespace=nowarn", *[f"--include={f}" for f in wanted], "-"]
    res = subprocess.run(args, cwd=work, input=text.encode(), capture_output=True)
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace")
        m = re.search(r"patch failed: (\S+):(\d+)", err)
        if m:
            hunk = _hunk_header(text, m.group(1), int(m.group(2)))
            raise UsageError(f"--xen-patch {name}: hunk '{hunk}' of {m.group(1)} does not apply to this tree; "
                             "is it the tree the patch was written against?")
        first = next((ln for ln in err.splitlines() if ln.strip()), "git apply failed")
        raise UsageError(f"--xen-patch {name}: does not apply ({first.strip()})")
    return skipped


def _hunk_header(text: str, path: str, line: int) -> str:
    part = text
    for m in _DIFF.finditer(text):
        if m.group(2) == path:
            part = text[m.start():]
            nxt = _DIFF.search(part, 1)
            part = part[: nxt.start()] if nxt else part
            break
    for m in _HUNK.finditer(part):
        if int(m.group(1)) == line:
            return part[m.start(): part.index("\n", m.start())].strip()
    return f"@@ -{line}"


# --- headers -------------------------------------------------------------------------------
def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", lambda m: " " * 0 + "\n" * m.group(0).count("\n"), text, flags=re.S)


def _define(text: str, name: str, what: str) -> str:
    """The ``#define name ...`` line (with its continuations) of a header; UsageError if missing."""
    m = re.search(rf"^[ \t]*#[ \t]*define[ \t]+{name}\b(?:[^\n\\]|\\\n|\\.)*", text, re.M)
    if not m:
        raise UsageError(f"--xen-tree: {what} defines no {name}; the testbed reads the mapcache's sizes from there")
    return m.group(0).strip()


def struct_block(text: str, name: str, what: str) -> str:
    """``struct name { ... };`` of a header, its braces matched."""
    m = re.search(rf"\bstruct[ \t]+{name}[ \t\n]*\{{", text)
    if not m:
        raise UsageError(f"--xen-tree: {what} defines no struct {name}")
    depth, i = 0, m.end() - 1
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            break
        i += 1
    end = text.index(";", i)
    return text[m.start(): end + 1]


def members(block: str) -> list[tuple[str, str, bool, bool]]:
    """(struct, member, is_array, is_pointer) of a struct block and the structs nested in it."""
    out = []
    outer = re.match(r"struct\s+(\w+)", block).group(1)
    body = block[block.index("{") + 1: block.rindex("}")]
    for nested in re.finditer(r"struct\s+(\w+)\s*\{([^{}]*)\}", body):
        out += _members_of(nested.group(1), nested.group(2))
    flat = re.sub(r"struct\s+(\w+)\s*\{[^{}]*\}", r"struct \1", body)
    return _members_of(outer, flat) + out


def _members_of(struct: str, body: str) -> list:
    out = []
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl or decl.startswith("#"):
            continue
        for part in decl.split(",")[-1:] if "(" in decl else [decl]:
            m = re.search(r"(\*?)\s*(\w+)\s*((?:\[[^\]]*\])*)\s*(?::\s*\d+)?\s*$", part)
            if m and m.group(2) not in ("struct", "unsigned", "long", "int"):
                if ":" in part:
                    continue                  # a bit-field: no offsetof
                out.append((struct, m.group(2), bool(m.group(3)), bool(m.group(1))))
    return out


def _pv_member(text: str, struct: str, what: str) -> str:
    block = struct_block(text, struct, what)
    m = re.search(r"struct\s+mapcache_\w+\s*\*?\s*mapcache\s*;", block)
    if not m:
        raise UsageError(f"--xen-tree: {what}'s struct {struct} has no mapcache member")
    return m.group(0)


def tree_header(domain_h: str, config_h: str, domain_page_c: str) -> str:
    """xen_tree.h: the tree's own constants and structs, parsed out of its headers."""
    dh, ch = _strip_comments(domain_h), _strip_comments(config_h)
    lines = ["/* xen_tree.h: generated by testbed/xen.py from the tree's domain.h and config.h. */", ""]
    for name in re.findall(r"^[ \t]*#[ \t]*define[ \t]+(MAPHASH\w*)", dh, re.M):
        lines.append(_define(dh, name, "domain.h"))
    for name in ("MAPCACHE_VCPU_ENTRIES", "MAPCACHE_ENTRIES"):
        lines.append(_define(ch, name, "config.h"))
    lines.append("")
    blocks = {s: struct_block(dh, s, "domain.h") for s in STRUCTS}
    lines += [blocks["mapcache_vcpu"], "", blocks["mapcache_domain"], ""]
    vcpu_member = _pv_member(dh, "pv_vcpu", "domain.h")
    lines.append(f"#define XEN_PV_VCPU_MAPCACHE {vcpu_member}")
    lines.append(f"#define XEN_PV_DOMAIN_MAPCACHE {_pv_member(dh, 'pv_domain', 'domain.h')}")
    lines.append("#define XEN_VCACHE(v) " + ("((v)->arch.pv.mapcache)" if "*" in vcpu_member
                                            else "(&(v)->arch.pv.mapcache)"))
    if re.search(r"^int\s+mapcache_domain_init\s*\(", domain_page_c, re.M):
        lines.append("#define XEN_HAS_DOMAIN_INIT 1")
    fields = [m for s in STRUCTS for m in members(blocks[s])]
    lines += ["", "/* the members the Python side reads (testbed/variants/xen.py) */",
              "struct testbed_xen_field { const char *name; i64 offset, size, elem, pointer; };"]
    rows = []
    for struct, member, is_array, is_pointer in fields:
        elem = f"sizeof(((struct {struct} *)0)->{member}[0])" if is_array else \
            f"sizeof(((struct {struct} *)0)->{member})"
        rows.append(f'  {{ "{struct}.{member}", offsetof(struct {struct}, {member}), '
                    f"sizeof(((struct {struct} *)0)->{member}), {elem}, {int(is_pointer and not is_array)} }},")
    lines += ["const struct testbed_xen_field testbed_xen_fields[] = {", *rows, "  { 0, 0, 0, 0, 0 },", "};",
              f"i64 testbed_xen_nfields(void) {{ return {len(rows)}; }}"]
    for name in CONSTS:
        lines.append(f"i64 testbed_xen_{name.lower()}(void) {{ return (i64)({name}); }}")
    return "\n".join(lines) + "\n"


# --- compile and load ------------------------------------------------------------------------
UNIT = """/* generated by testbed/xen.py: the port's loop, the shim, the tree's file, the glue */
#define TESTBED_XEN 1
#include "testbed_op.c"
#include "xen/shim.h"
#include "xen_tree.h"
#include "xen/shim_sched.h"
#include "tree/xen/arch/x86/domain_page.c"
#include "xen/glue.c"
"""


def _compile(cc: str, work: Path, generated: str, domain_page_c: str, tmp: str, out: str) -> None:
    inc = Path(tmp, "inc")
    for hdr in re.findall(r"^\s*#\s*include\s*<([^>]+)>", domain_page_c, re.M):
        Path(inc, hdr).parent.mkdir(parents=True, exist_ok=True)
        Path(inc, hdr).write_text("/* empty: the shim (csrc/xen/shim.h) stands for it */\n")
    Path(tmp, "xen_tree.h").write_text(generated)
    Path(tmp, native.DESIGNS_H).write_text(native.designs_header())
    Path(tmp, "unit.c").write_text(UNIT)
    lib = Path(tmp, "lib.so")
    res = subprocess.run([cc, *CFLAGS, f"-I{tmp}", f"-I{CSRC}", f"-I{inc}", "unit.c", "-o", str(lib)], cwd=tmp,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise UsageError(first_error(res.stderr, tmp))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(out))
    shutil.copy(lib, os.path.join(stage, "lib.so"))
    shutil.copytree(work, os.path.join(stage, "tree"))
    Path(stage, "xen_tree.h").write_text(generated)
    try:
        os.rename(stage, out)          # atomic: a concurrent build of the same key wins or loses whole
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)


def first_error(stderr: str, tmp: str) -> str:
    """The compiler's first error, in the user's terms: the Xen file's path, or the shim's."""
    for line in stderr.splitlines():
        if " error: " in line or line.startswith("error:"):
            line = line.replace(os.path.join(tmp, "tree") + "/", "").replace("tree/xen/", "xen/")
            line = line.replace(str(CSRC) + "/", "testbed/csrc/").replace(tmp + "/", "")
            return f"the shim cannot compile this tree's {DOMAIN_PAGE}: {line.strip()}"
    tail = [ln for ln in stderr.splitlines() if ln.strip()][-1:] or ["no message"]
    return f"the shim cannot compile this tree's {DOMAIN_PAGE}: {tail[0].strip()}"


class _Field(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_int64), ("size", ctypes.c_int64),
                ("elem", ctypes.c_int64), ("pointer", ctypes.c_int64)]


def _load(path: str):
    lib = ctypes.CDLL(path)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.testbed_xen_heap_bytes.restype = i64
    lib.testbed_xen_heap_bytes.argtypes = [i64]
    lib.testbed_xen_init.restype = i64
    lib.testbed_xen_init.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr]
    lib.testbed_xen_build_bugs.restype = i64
    lib.testbed_xen_build_bugs.argtypes = [ptr, i64]
    lib.testbed_xen_dcache.restype = ptr
    lib.testbed_xen_vcache.restype = ptr
    lib.testbed_xen_vcache.argtypes = [i64]
    for name in CONSTS:
        getattr(lib, f"testbed_xen_{name.lower()}").restype = i64
    return lib


def _fields(lib) -> dict:
    lib.testbed_xen_nfields.restype = ctypes.c_int64
    table = (_Field * int(lib.testbed_xen_nfields())).in_dll(lib, "testbed_xen_fields")
    out: dict = {}
    for f in table:
        if not f.name:
            break
        struct, member = f.name.decode().split(".")
        out.setdefault(struct, {})[member] = (int(f.offset), int(f.size), int(f.elem), bool(f.pointer))
    return out
