"""Every CUDA runtime name our code uses exists in cuda-python's runtime module, without a GPU.

The TensorRT path calls cuda-python's `cuda.bindings.runtime` (dit_export/engine/cuda.py, and
bench/timing.py's event clock), imported at first use; on a machine without a GPU it is neither
installed nor checked. tests/data/cudart_names.txt lists every `cuda*` attribute and enum member
of that module (cuda-bindings 13.5.0, the runtime of cuda-python 13). Refresh it with:

    pip download --no-deps -d W cuda-bindings==13.5.0 cuda-pathfinder && (cd W && unzip -oq '*.whl')
    PYTHONPATH=W python tests/engine/test_cuda_names.py --refresh

Uses are read from the source with `ast`: `rt.NAME`, `cudart().NAME` and `rt.ENUM.MEMBER` in
every module that calls `cudart()`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMES = ROOT / "tests" / "data" / "cudart_names.txt"


def known() -> set[str]:
    return {ln.strip() for ln in NAMES.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


def _chain(node: ast.AST) -> list[str] | None:
    """['cudaError_t', 'cudaSuccess'] for rt.cudaError_t.cudaSuccess (or cudart().…); else None."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    base = isinstance(node, ast.Name) and node.id == "rt"
    base |= isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "cudart"
    return attrs[::-1] if base and attrs else None


def used() -> dict[str, list[str]]:
    """{'cudaMemcpyKind.cudaMemcpyHostToDevice': ['dit_export/engine/cuda.py:170', ...], ...}."""
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / "dit_export").rglob("*.py")):
        src = path.read_text()
        if "cudart()" not in src:
            continue
        tree = ast.parse(src)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
                continue  # only whole chains
            chain = _chain(node)
            if chain and chain[0].startswith("cuda"):
                name = ".".join(chain[:2])
                out.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


def test_every_cuda_name_we_use_exists_in_cuda_python():
    uses = used()
    assert len(uses) >= 25 and "cudaGraphInstantiate" in uses and "cudaError_t.cudaSuccess" in uses, sorted(
        uses
    )
    missing = {name: where for name, where in uses.items() if name not in known()}
    assert not missing, f"not in cuda-bindings 13.5.0's runtime module: {missing}"


def test_the_error_names_matched_as_strings_exist():
    """engine/cuda.py compares error names as strings (no GPU / driver mismatch)."""
    from dit_export.engine import cuda

    names = {f"cudaError_t.{n}" for n in cuda.DRIVER_MISMATCH_ERRORS}
    assert names and names <= known(), names - known()


def test_the_check_notices_a_misspelt_name():
    assert "cudaStreamSyncronize" not in known() and "cudaStreamSynchronize" in known()
    tree = ast.parse("rt.cudaMemcpyKind.cudaMemcpyHostToDevise")
    assert _chain(tree.body[0].value) == ["cudaMemcpyKind", "cudaMemcpyHostToDevise"]  # type: ignore[attr-defined]
    assert "cudaMemcpyKind.cudaMemcpyHostToDevise" not in known()


def refresh() -> None:
    import cuda.bindings
    from cuda.bindings import runtime as rt

    out = []
    for n in sorted(dir(rt)):
        if n.startswith("cuda"):
            out.append(n)
            o = getattr(rt, n)
            if isinstance(o, type) and hasattr(o, "__members__"):
                out += [f"{n}.{m}" for m in sorted(o.__members__)]
    NAMES.write_text(
        f"# Attribute names of cuda.bindings.runtime (cuda-bindings {cuda.bindings.__version__}, the runtime "
        "module of cuda-python 13): every\n# cuda* name and enum member; tests/engine/test_cuda_names.py checks "
        "the names our code uses against it.\n" + "\n".join(out) + "\n"
    )
    print(f"wrote {len(out)} names to {NAMES}")


if __name__ == "__main__" and sys.argv[1:] == ["--refresh"]:
    refresh()
