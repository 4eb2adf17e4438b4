"""The catalog for the `models` command: every name `--model` accepts, its size and cost, and
whether its weights are shipped, already cached, downloadable, or random only. No torch."""

from __future__ import annotations

import os

from dit_export.models import hub
from dit_export.models.configs import PATCHES, SIZES, DiTConfig, embedded_config, model_config
from dit_export.models.embedded import EMBEDDED

IMAGE_SIZES = (256, 512)


def list_models(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per (model, image size): every published shape at 256 and 512 px, then the shipped models.

    Keys: name, image_size, depth, hidden_size, num_heads, patch_size, params (pos_embed included),
    gmacs (per image per denoiser forward; the paper's "Gflops"), gflops (= 2 × gmacs), weights
    ("shipped", "released" or "random only"), released (file names / Hub ids of the published
    weights at this size), cached (those of them already on disk, or the shipped model's name).
    """
    rows = []
    for size in SIZES:
        for patch in PATCHES:
            for image in IMAGE_SIZES:
                cfg = model_config(f"{size}/{patch}", image)
                released = [
                    src
                    for table in (hub.OFFICIAL_CHECKPOINTS, hub.HUB_CHECKPOINTS)
                    for src, spec in table.items()
                    if spec == (cfg.name, image)
                ]
                weights = "released" if released else "random only"
                rows.append(
                    _row(
                        cfg,
                        cfg.name,
                        image,
                        weights,
                        released,
                        hub.describe_cache(cfg.name, image, cache_dir),
                    )
                )
    for name, m in EMBEDDED.items():
        cached = [name] if hub.shipped_files_present(name) else []
        rows.append(_row(embedded_config(name), name, m.image_size, "shipped", [], cached))
    return rows


def format_models(rows: list[dict]) -> str:
    """The rows as an aligned text table (what `python -m dit_export models` prints)."""
    head = ("model", "image", "params", "GFLOPs", "weights")
    lines = [head]
    for r in rows:
        if r["weights"] == "shipped":
            where = "shipped in the package" if r["cached"] else "shipped, but missing (reinstall)"
        elif r["weights"] == "released":
            where = f"cached ({', '.join(r['cached'])})" if r["cached"] else "downloaded on first use"
        else:
            where = "random weights only (--random-weights)"
        lines.append(
            (r["name"], str(r["image_size"]), f"{r['params'] / 1e6:.1f} M", f"{r['gflops']:.2f}", where)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in lines
    ]
    notes = (
        "GFLOPs: one denoiser forward for one image (2 × the paper's 'Gflops', which are MACs); "
        "a guided sampling step runs it twice."
    )
    return "\n".join(t.rstrip() for t in text) + "\n" + notes


def _row(cfg: DiTConfig, name: str, image_size: int, weights: str, released: list, cached: list) -> dict:
    macs = cfg.macs_per_forward()
    return {
        "name": name,
        "image_size": image_size,
        "depth": cfg.depth,
        "hidden_size": cfg.hidden_size,
        "num_heads": cfg.num_heads,
        "patch_size": cfg.patch_size,
        "params": cfg.num_params(),
        "gmacs": macs / 1e9,
        "gflops": 2 * macs / 1e9,
        "weights": weights,
        "released": released,
        "cached": cached,
    }
