"""The package's import order, checked from the source with `ast` (issue 10), and the torch-free paths.

Stages, low to high: base helpers < models < sampling < export < engine < runtime < verify, bench, serve,
sets < pipeline < cli (the command line is the top layer: `build` runs the pipeline). A module imports only its own stage or lower ones, and there is no import cycle
between modules; the runtime, the parsers, `--help`, `inspect` and `score --engines` import no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_python

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dit_export"

BASE = ("errors", "fileio", "images", "backends", "lazy", "compare", "host", "__init__")
# stage name → rank; equal ranks (verify/bench, pipeline/cli) may not import each other either
STAGES = {
    "base": 0,
    "models": 1,
    "sampling": 2,
    "export": 3,
    "engine": 4,
    "runtime": 5,
    "verify": 6,
    "bench": 6,
    "serve": 6,
    "sets": 6,  # sample sets: a consumer of the runtime, like verify/bench/serve
    "pipeline": 7,
    "cli": 8,  # the layer above every stage (`build` runs the pipeline)
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    if module == "dit_export.__main__":  # `python -m dit_export` is the command line
        return "cli"
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    if parts[1] not in STAGES:
        raise AssertionError(f"{module}: not in a known stage; add its package to STAGES in {__file__}")
    return parts[1]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(our module imported, line, at module top) for every import of dit_export in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks are not imports at run time
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                top_level.discard(id(sub))
            node.body = []
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from pkg import mod` imports pkg.mod when that is a module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for n in names:
            if n == "dit_export" or n.startswith("dit_export."):
                while n not in known and "." in n:
                    n = n.rpartition(".")[0]
                found.append((n, node.lineno, id(node) in top_level))
    return list(dict.fromkeys(found))


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) for m, p in mods.items()}


def test_every_module_belongs_to_a_stage() -> None:
    for m in modules():
        stage_of(m)


def test_no_module_imports_a_higher_stage() -> None:
    bad = []
    for mod, deps in graph().items():
        here = stage_of(mod)
        for dep, line, _ in deps:
            there = stage_of(dep)
            if STAGES[there] > STAGES[here] or (STAGES[there] == STAGES[here] and there != here):
                bad.append(f"{mod}:{line} ({here}) imports {dep} ({there})")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    """Between modules (a package's __init__ re-exporting its own modules is not a cycle)."""
    # A package's __init__ re-exporting its children, and a child naming its parent package, is how
    # Python packages work, not a cycle: drop the edges between a module and its own ancestors.
    edges = {
        m: {d for d, _, _ in deps if d != m and not d.startswith(m + ".") and not m.startswith(d + ".")}
        for m, deps in graph().items()
    }
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (depth-first search), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_find_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The ast walk finds module-level, function-level and relative imports."""
    src = tmp_path / "dit_export" / "models" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text(
        "import dit_export.cli\n\ndef f():\n    from ..runtime import sampler\n    from . import y\n"
    )
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        known = {"dit_export.cli", "dit_export.runtime", "dit_export.runtime.sampler", "dit_export.models.y"}
        found = imports_of(src, known)
    finally:
        ROOT = old
    assert [(n, top) for n, _, top in found] == [
        ("dit_export.cli", True),
        ("dit_export.runtime.sampler", False),
        ("dit_export.models.y", False),
    ]


def blocker(*names: str) -> str:
    """Code that makes importing any of these top-level packages fail (a fresh interpreter's prelude)."""
    return f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


BLOCK_TORCH = blocker("torch", "diffusers", "onnx", "tensorrt", "polygraphy", "sklearn")


@pytest.mark.parametrize(
    "code",
    [
        "import dit_export.cli",
        "import dit_export.runtime",
        "from dit_export.runtime.sampler import Sampler",
        "import dit_export.sets",
        "import dit_export.backends, dit_export.compare, dit_export.lazy, dit_export.images",
        "from dit_export.export.manifest import Manifest",
        "from dit_export.models.spec import ModelSpec",
        "from dit_export.cli import build_parser; build_parser().parse_args(['sample', '--engines', 'x'])",
        # `inspect` reads ONNX files only; `score --engines` samples on the runtime (torch: the reference only)
        "from dit_export.export.report import inspect_folder",
        "from dit_export.export.quantize import graph_precision",
        "import dit_export.verify.score",
    ],
)
def test_light_paths_import_no_torch(code: str) -> None:
    r = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code + "\nassert 'torch' not in sys.modules"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_help_of_every_command_without_torch() -> None:
    """Every command's `--help` on a runtime-only install: no torch, onnx, diffusers, TensorRT, nor
    (for the parsers) onnxruntime or matplotlib (was also tests/cli/test_cli_sample.py's `sample --help`)."""
    code = BLOCK_TORCH + (
        "sys.modules['onnxruntime'] = sys.modules['matplotlib'] = None\n"
        "from dit_export.cli import COMMANDS, build_parser\n"
        "p = build_parser()\n"
        "names = [a for a in p._subparsers._group_actions[0].choices]\n"
        "for name in names:\n"
        "    print('=== ' + name)\n"
        "    try:\n"
        "        p.parse_args([name, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, name\n"
        "print(len(names))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) >= 12
    sample_help = r.stdout.split("=== sample\n", 1)[1].split("\n=== ", 1)[0]
    assert "--engines" in sample_help, sample_help


def test_inspect_command_imports_no_torch(tmp_path_factory) -> None:
    """`inspect DIR` (run ~10 times by the suite, and by users) reads the manifest and the ONNX
    graphs: torch (1-2 s of import per process) stays out; was imported through the exporter's graphs."""
    from folders import s8_folder  # the shared S/8 fp32 build (made once per test run)

    folder = s8_folder(tmp_path_factory, "fp32")
    code = blocker("torch", "diffusers", "tensorrt", "polygraphy") + (  # inspect reads ONNX: onnx stays
        "from dit_export.cli import main\n"
        f"rc = main(['inspect', {str(folder)!r}, '--no-hash'])\n"
        "assert rc == 0 and 'torch' not in sys.modules, rc\n"
    )
    out = run_python(code, timeout=120)
    assert "dit_step.onnx" in out and "samplers" in out, out[-2000:]
