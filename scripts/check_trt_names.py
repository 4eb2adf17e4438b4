#!/usr/bin/env python3
"""Check the TensorRT API our code uses against TensorRT 11.x and 10.x, without TensorRT or a GPU.

    python scripts/check_trt_names.py            # names check (offline, CI) + mypy vs tensorrt-stubs
    python scripts/check_trt_names.py --refresh  # re-read the name lists from the PyPI wheels

Names: every attribute name in the TensorRT-facing files (dit_export/engine/*.py and
dit_export/runtime/trt_backend.py) that is a TensorRT API name (it appears in the 10.x stubs or
the 10.0 bindings) must also be registered by the 11.x bindings; names that 10.0 lacks must be
listed in `trt_api.NEEDS_10_1` (they are used behind hasattr checks).

Where the 11.x names come from: `pip download --no-deps tensorrt-cu13-bindings` gives the real
11.x Python module (tensorrt_bindings/tensorrt.so), which cannot be imported without libnvinfer.
pybind11 registers each class, method, property and enum value by a C string literal that the
module's code loads with a RIP-relative `lea`; the linker merges string tails ("Logger" inside
"ILogger"), so `strings` alone misses names. We scan `.text` for `lea reg, [rip+disp32]` whose
target lies in `.rodata` and keep the identifiers found there: the exact set of names the module
can register. The lists are committed (dit_export/engine/trt11_names.txt, trt10.0_names.txt) so
CI needs no network.

10.x types: mypy checks the same files against `tensorrt-stubs` (10.13). That package's stubs
have syntax errors (a parameter named `in`, a non-default parameter after defaults), and it
installs without a py.typed marker, so mypy would silently treat tensorrt as untyped: we copy the
stubs to a temporary folder, repair those lines, and point MYPYPATH at it.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import importlib.util
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "dit_export" / "engine"
NAMES_11 = ENGINE / "trt11_names.txt"
NAMES_10_0 = ENGINE / "trt10.0_names.txt"
TRT_FILES = sorted(ENGINE.glob("*.py")) + [ROOT / "dit_export" / "runtime" / "trt_backend.py"]
# The TensorRT 11 lean runtime (tensorrt-lean-cu13-bindings + -libs): imports on a CPU-only machine.
LEAN_MODULE = "tensorrt_lean_bindings"
MYPY_FILES = [
    ENGINE / "trt_api.py",
    ENGINE / "cuda.py",
    ENGINE / "plans.py",
    ROOT / "dit_export/runtime/trt_backend.py",
]

WHEELS_11 = ("tensorrt-cu13-bindings==11.0.0.114", "tensorrt-cu13-bindings==11.4.0.106")
WHEELS_10_0 = ("tensorrt-cu12-bindings==10.0.1",)
# Module attributes the Python wrapper package defines (not the compiled bindings).
WRAPPER_NAMES = {"__version__"}

_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\Z")
# lea r64, [rip + disp32]: REX.W (48) or REX.WR (4c), opcode 8d, ModRM with mod=00 rm=101
_LEA_RIP = re.compile(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]")


# ------------------------------------------------------------------------------ reading the wheels


def elf_sections(data: bytes) -> dict[str, tuple[int, int, int]]:
    """{name: (address, file offset, size)} of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = heads[shstrndx][4]
    out = {}
    for name, _typ, _flags, addr, off, size in heads:
        end = data.index(b"\0", strtab + name)
        out[data[strtab + name : end].decode()] = (addr, off, size)
    return out


def registered_names(so: bytes) -> set[str]:
    """Identifiers the compiled module loads as string literals (see the module docstring)."""
    secs = elf_sections(so)
    t_addr, t_off, t_size = secs[".text"]
    r_addr, r_off, r_size = secs[".rodata"]
    text = so[t_off : t_off + t_size]
    names = set()
    for m in _LEA_RIP.finditer(text):
        i = m.start()
        (disp,) = struct.unpack_from("<i", text, i + 3)
        target = t_addr + i + 7 + disp
        if r_addr <= target < r_addr + r_size:
            o = r_off + target - r_addr
            end = so.find(b"\0", o, o + 256)
            if end > o and _IDENT.match(so[o:end]):
                names.add(so[o:end].decode())
    return names


def wheel_names(requirement: str, workdir: Path) -> tuple[set[str], str]:
    """(names, provenance line) for one bindings wheel downloaded from PyPI."""
    d = workdir / re.sub(r"[^A-Za-z0-9.]+", "_", requirement)
    d.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            requirement,
            "-d",
            str(d),
        ],
        check=True,
    )
    (whl,) = list(d.glob("*.whl"))
    sha = hashlib.sha256(whl.read_bytes()).hexdigest()
    with zipfile.ZipFile(whl) as z:
        (member,) = [n for n in z.namelist() if re.match(r"tensorrt_bindings/tensorrt[^/]*\.so$", n)]
        names = registered_names(z.read(member))
    return names, f"{whl.name} sha256 {sha} ({member}, {len(names)} names)"


def refresh() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sets, lines = [], []
        for req in WHEELS_11:
            names, line = wheel_names(req, Path(tmp))
            sets.append(names)
            lines.append(line)
        _write(NAMES_11, set.intersection(*sets), "TensorRT 11.x", lines)
        names, line = wheel_names(WHEELS_10_0[0], Path(tmp))
        _write(NAMES_10_0, names, "TensorRT 10.0 (the oldest 10.x)", [line])


def _write(path: Path, names: set[str], what: str, provenance: list[str]) -> None:
    head = [
        f"# {what} Python API names: identifiers the tensorrt_bindings module registers, present in",
        "# every wheel below. Generated by scripts/check_trt_names.py --refresh; do not edit.",
    ] + [f"# {p}" for p in provenance]
    path.write_text("\n".join(head + sorted(names)) + "\n")
    print(f"wrote {path.relative_to(ROOT)}: {len(names)} names")


def read_names(path: Path) -> set[str]:
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


# ------------------------------------------------------------------------------ our code


def _stub_files() -> list[Path]:
    for base in map(Path, sys.path):
        init = base / "tensorrt" / "__init__.pyi"
        if init.is_file() and (base / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            return [init, base / "tensorrt_bindings" / "tensorrt.pyi"]
    return []


def _repair_stub(text: str) -> str:
    """Fix the syntax errors of tensorrt-stubs 10.x so ast and mypy can read them."""
    lines = text.splitlines()
    for _ in range(200):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines) + "\n"
        except SyntaxError as e:
            i = (e.lineno or 1) - 1
            fixed = _repair_def(lines[i])
            if fixed == lines[i]:
                raise
            lines[i] = fixed
    raise SyntaxError("tensorrt stubs: too many syntax errors to repair")


def _repair_def(line: str) -> str:
    line = re.sub(r"([(,]\s*)(in|from|lambda|def|class|is|not|and|or)(\s*:)", r"\1\2_\3", line)
    m = re.match(r"(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not m:
        return line
    params, seen_default, out = _split_params(m.group(2)), False, []
    for p in params:
        if "=" in p:
            seen_default = True
        elif seen_default and not p.strip().startswith("*"):
            p = p + " = ..."
        out.append(p)
    return m.group(1) + ",".join(out) + m.group(3)


def _split_params(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur] if cur else parts


def _stub_dir(tmp: Path) -> Path | None:
    """Repaired copies of the tensorrt-stubs files in `tmp` (None when the stubs are not installed)."""
    stubs = _stub_files()
    if not stubs:
        return None
    for f in stubs:
        dst = tmp / f.parent.name / f.name
        dst.parent.mkdir(exist_ok=True)
        dst.write_text(_repair_stub(f.read_text()))
    (tmp / "tensorrt_bindings" / "__init__.pyi").touch()
    return tmp


def typed_attributes(files: list[Path]) -> dict[str, list[str]] | None:
    """{name: ["file:line (Owner)", ...]} for every attribute our code takes from a TensorRT object.

    Uses mypy's inferred types (against the 10.x stubs): `x.name` counts when x is the tensorrt
    module, a TensorRT class, or an instance of one (Optional included); a method defined in a
    subclass of a TensorRT class (the ILogger callback) counts too. None without the stubs.
    """
    try:
        from mypy import build
        from mypy.modulefinder import BuildSource
        from mypy.nodes import MypyFile, RefExpr, TypeInfo
        from mypy.options import Options
        from mypy.traverser import NameAndMemberCollector
        from mypy.types import Instance, TypeType, UnionType, get_proper_type
    except ImportError:  # mypy is not installed: the caller falls back to trt.X chains
        return None

    with tempfile.TemporaryDirectory() as tmp:
        stubdir = _stub_dir(Path(tmp))
        if stubdir is None:
            return None
        opts = Options()
        opts.export_types = True
        opts.check_untyped_defs = True
        opts.ignore_missing_imports = True
        opts.follow_imports = "skip"  # only our files and the TensorRT stubs are analysed: fast
        opts.incremental = False
        opts.preserve_asts = True  # keep the trees of our files for the walk below
        opts.mypy_path = [str(stubdir)]
        for mod in ("tensorrt", "tensorrt.*", "tensorrt_bindings", "tensorrt_bindings.*"):
            opts.per_module_options[mod] = {"follow_imports": "silent"}
        sources = [BuildSource(str(f), _module_name(f)) for f in files]
        result = build.build(sources, opts)
    types = result.types

    def trt_owner(node) -> str | None:
        if isinstance(node, RefExpr) and isinstance(node.node, (MypyFile, TypeInfo)):
            name = node.node.fullname
            return name if name.split(".")[0] in ("tensorrt", "tensorrt_bindings") else None
        t = get_proper_type(types.get(node)) if node in types else None
        cands = [get_proper_type(u) for u in t.items] if isinstance(t, UnionType) else [t]
        for c in cands:
            if isinstance(c, TypeType):
                c = get_proper_type(c.item)
            if isinstance(c, Instance) and c.type.fullname.split(".")[0] in ("tensorrt", "tensorrt_bindings"):
                return c.type.fullname
        return None

    found: dict[str, list[str]] = {}
    for f in files:
        state = result.graph.get(_module_name(f))
        if state is None or state.tree is None:
            continue
        rel = _rel(f)
        collector = NameAndMemberCollector()  # mypy is compiled: use its collector, do not subclass
        state.tree.accept(collector)
        for e in collector.member_exprs:
            owner = trt_owner(e.expr)
            if owner:
                found.setdefault(e.name, []).append(f"{rel}:{e.line} ({owner.split('.')[-1]})")
        for sym in state.tree.names.values():  # local classes are stored here too, as "Name@line"
            info = sym.node
            if not isinstance(info, TypeInfo) or info.module_name != _module_name(f):
                continue
            for base in info.mro[1:]:
                if base.fullname.split(".")[0] in ("tensorrt", "tensorrt_bindings"):
                    for name in info.names:
                        if name in base.names and not name.startswith("__"):
                            found.setdefault(name, []).append(f"{rel}:{info.line} (override of {base.name})")
    return found


def _module_name(f: Path) -> str:
    if not f.resolve().is_relative_to(ROOT):
        return f.stem
    parts = f.resolve().relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rel(f: Path) -> str:
    return str(f.resolve().relative_to(ROOT)) if f.resolve().is_relative_to(ROOT) else str(f)


def module_rooted_attributes(files: list[Path]) -> dict[str, list[str]]:
    """Without the stubs: names in `trt.X.Y` chains (the module imported as trt or tensorrt)."""
    used: dict[str, list[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if (
                chain
                and isinstance(cur, ast.Name)
                and cur.id in ("trt", "tensorrt")
                and isinstance(node.ctx, ast.Load)
            ):
                for n in chain:
                    used.setdefault(n, []).append(f"{_rel(f)}:{node.lineno}")
    return used


def needs_10_1() -> set[str]:
    """The NEEDS_10_1 tuple of trt_api.py, read without importing it."""
    tree = ast.parse((ENGINE / "trt_api.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NEEDS_10_1" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def check_names(
    files: list[Path] | None = None, verbose: bool = False
) -> tuple[list[str], dict[str, list[str]], str]:
    """(problems, names used → where, how they were collected); no problems = fine."""
    names11, names10 = read_names(NAMES_11), read_names(NAMES_10_0)
    files = files or TRT_FILES
    used = typed_attributes(files)
    how = "typed (mypy against tensorrt-stubs 10.x)"
    if used is None:
        used, how = (
            module_rooted_attributes(files),
            "trt.X chains only (mypy or tensorrt-stubs not installed)",
        )
    gated = needs_10_1()
    problems = []
    for n in sorted(set(used) - WRAPPER_NAMES):
        where = ", ".join(used[n][:3])
        if n not in names11:
            problems.append(f"{n} ({where}): not in the TensorRT 11.x bindings")
        elif n not in names10 and n not in gated:
            problems.append(
                f"{n} ({where}): not in TensorRT 10.0; guard it with hasattr and add it to trt_api.NEEDS_10_1"
            )
    if verbose:
        print(f"{len(used)} TensorRT API names used, collected {how}:")
        print("  " + ", ".join(sorted(used)))
    return problems, used, how


# ------------------------------------------------------------------------------ the real lean runtime


def _trt_aliases(tree: ast.AST) -> set[str]:
    """Names the tensorrt module is bound to in a file (import tensorrt [as x]; x = optional_import("tensorrt"))."""
    aliases = {"trt", "tensorrt"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            args = node.value.args
            if args and isinstance(args[0], ast.Constant) and args[0].value == "tensorrt":
                aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return aliases


def _chain(node: ast.AST) -> list[str] | None:
    """`trt.A.B` → ["trt", "A", "B"]; None for anything that is not a dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _lean_class(lean, dotted: str):
    obj = lean
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) else None


def _returns(lean, cls: str, method: str) -> str | None:
    """The TensorRT class a lean method returns, from its pybind11 signature (None when not a class)."""
    fn = getattr(_lean_class(lean, cls), method, None)
    doc = getattr(fn, "__doc__", "") or ""
    m = re.search(rf"^(?:\d+\. )?{re.escape(method)}\(.*\) -> (?:[\w.]*\.)?(\w+)\s*$", doc, re.M)
    return m.group(1) if m and _lean_class(lean, m.group(1)) is not None else None


class _RuntimeUses(ast.NodeVisitor):
    """(class, attribute, where) for every TensorRT attribute a file uses, by a small type inference:
    `trt.X.Y` chains; names and `self.x` annotated `trt.C` (or `trt.C | None`); `v = <call returning C>`
    (return types from the lean module's signatures); `v = trt.C(...)`; methods of `trt.C` subclasses."""

    def __init__(self, lean, aliases: set[str], rel: str) -> None:
        self.lean, self.aliases, self.rel = lean, aliases, rel
        self.env: dict[str, str] = {}
        self.uses: list[tuple[str, str, str]] = []

    def type_of(self, node: ast.AST | None) -> str | None:
        if node is None or isinstance(node, ast.Constant):
            return None
        if isinstance(node, ast.BinOp):  # trt.C | None
            return self.type_of(node.left) or self.type_of(node.right)
        chain = _chain(node)
        if chain and chain[0] in self.aliases and len(chain) > 1:
            return ".".join(chain[1:])
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                owner = self.type_of(node.func.value)
                if owner:  # a method of a TensorRT object: its return type
                    return _returns(self.lean, owner, node.func.attr)
            return self.type_of(node.func)  # trt.C(...): a C
        return self.env.get(ast.unparse(node))

    def annotation(self, node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "trt.C" forward references
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        return self.type_of(node)

    def bind(self, target: ast.AST, value_type: str | None) -> None:
        if value_type:
            self.env[ast.unparse(target)] = value_type

    def visit_arg(self, node: ast.arg) -> None:
        self.bind(ast.Name(node.arg), self.annotation(node.annotation))

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        self.bind(node.target, self.annotation(node.annotation))

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for t in node.targets:
            if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for a, b in zip(t.elts, node.value.elts):
                    self.bind(a, self.type_of(b))
            else:
                self.bind(t, self.type_of(node.value))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            base_type = self.type_of(base)
            if base_type:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        self.uses.append((base_type, item.name, f"{self.rel}:{item.lineno}"))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        if chain and chain[0] in self.aliases:
            if len(chain) == 2:
                self.uses.append(("", chain[1], f"{self.rel}:{node.lineno}"))
            else:
                self.uses.append((".".join(chain[1:-1]), chain[-1], f"{self.rel}:{node.lineno}"))
            return
        owner = self.type_of(node.value)
        if owner:
            self.uses.append((owner, node.attr, f"{self.rel}:{node.lineno}"))
        self.generic_visit(node)


def runtime_uses(lean, files: list[Path] | None = None) -> list[tuple[str, str, str]]:
    """(owner, attribute, "file:line") for every TensorRT attribute our code uses; owner "" = the module."""
    uses = []
    for f in files or TRT_FILES:
        tree = ast.parse(f.read_text(), str(f))
        visitor = _RuntimeUses(lean, _trt_aliases(tree), _rel(f))
        for node in sorted(
            (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))),
            key=lambda n: n.lineno,
        ):
            if isinstance(node, ast.ClassDef):  # annotations of self.x in every method, first
                for item in ast.walk(node):
                    if isinstance(item, ast.AnnAssign):
                        visitor.bind(item.target, visitor.annotation(item.annotation))
        visitor.visit(tree)
        uses += visitor.uses
    return sorted(set(uses))


def check_runtime(lean, files: list[Path] | None = None) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(problems, uses): each runtime attribute must exist on the real lean module's class; a name on a
    class the lean runtime lacks (Builder, OnnxParser, …: builder side) must be in the 11.x name list."""
    names11 = read_names(NAMES_11)
    problems = []
    uses = runtime_uses(lean, files)
    for owner, attr, where in uses:
        if attr in WRAPPER_NAMES:
            continue
        root = _lean_class(lean, owner) if owner else lean
        label = f"{owner}.{attr}" if owner else attr
        if root is lean and not hasattr(lean, attr):  # a builder-side class (Builder, OnnxParser, ...)
            root, owner = None, ""
        if root is not None:
            if not hasattr(root, attr):
                problems.append(f"{label} ({where}): not in the TensorRT 11 lean runtime ({lean.__name__})")
        elif attr not in names11 or any(p not in names11 for p in owner.split(".") if p):
            problems.append(f"{label} ({where}): not in the TensorRT 11.x bindings (builder side)")
    return problems, uses


def run_mypy(files: list[Path] | None = None) -> tuple[int, str]:
    """mypy over the TensorRT-facing files against repaired tensorrt-stubs; (exit code, output)."""
    if importlib.util.find_spec("mypy") is None:
        return 0, "mypy is not installed: mypy check skipped (pip install mypy)"
    with tempfile.TemporaryDirectory() as tmp:
        if _stub_dir(Path(tmp)) is None:
            return (
                0,
                "tensorrt-stubs is not installed: mypy check skipped (pip install --no-deps tensorrt-stubs)",
            )
        config = Path(tmp) / "mypy.ini"  # the generated stubs have type errors of their own: not ours
        config.write_text(
            "[mypy]\nignore_missing_imports = True\ncheck_untyped_defs = True\nfollow_imports = skip\n"
            "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\n"
            "ignore_errors = True\nfollow_imports = silent\n"
        )
        env = dict(os.environ, MYPYPATH=tmp)
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary",
               "--cache-dir", str(Path(tmp) / "cache")]  # fmt: skip
        proc = subprocess.run(
            cmd + [str(f) for f in files or MYPY_FILES], env=env, capture_output=True, text=True, cwd=ROOT
        )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refresh", action="store_true", help="re-read the name lists from the PyPI wheels")
    ap.add_argument("--no-mypy", action="store_true", help="names check only")
    args = ap.parse_args(argv)
    if args.refresh:
        refresh()
    problems, _, _ = check_names(verbose=True)
    try:
        lean = importlib.import_module(LEAN_MODULE)
    except ImportError:
        print(f"note: {LEAN_MODULE} is not installed: runtime check skipped (pip install tensorrt-lean-cu13-bindings "
              "tensorrt-lean-cu13-libs)")  # fmt: skip
    else:
        more, uses = check_runtime(lean)
        problems += more
        print(f"{len(uses)} TensorRT attribute uses checked against {LEAN_MODULE} {lean.__version__}")
    for p in problems:
        print(f"error: {p}")
    rc = 1 if problems else 0
    if not args.no_mypy:
        code, out = run_mypy()
        if out:
            print(out)
        rc = rc or code
    if rc == 0:
        print("ok: every TensorRT name we use exists in 11.x (and in 10.x, or is version-gated)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
