"""Pass/fail limits of `verify`, per precision, in one table (README and --help quote it).

Every value compares a backend with the PyTorch fp32 reference fed identical inputs and noise.
rel-L2 = ‖a − r‖₂ / ‖r‖₂ (upper limits); PSNR in dB over uint8 pixels (lower limit); max |Δ| over
uint8 pixels (upper limit).

Measured (ONNX Runtime 1.32 CPU vs torch 2.13 CPU, random-weight DiT-S/8 at 256 px, batch 2,
tiny random VAE, cfg 4, DDPM):

    stage           fp32 graph   fp16 graph (ORT CPU)
    denoiser        5e-7         2.2e-5
    guided eps      1.8e-6       6.9e-5
    step            4e-7         8e-6
    final latents   5e-7 (20 st) 9.5e-6 (50 steps)
    images          86.6 dB, 1   65.5 dB, 1

- fp32: the limits leave ≥ 20× headroom for other kernels (TensorRT fp32 without TF32, CUDA)
  and longer loops; a graph with one weight scaled by 1.05 fails them by orders of magnitude.
- fp16: ORT's CPU provider computes many fp16 ops in fp32, so the CPU numbers are a lower bound
  of a GPU engine's. The limits follow the export's per-graph check (rel-L2 1e-2), ×3 for guided
  ε (the scale multiplies cond − uncond), 5e-2 for the latents after the loop, 30 dB for images.
  They have not been measured on a GPU engine yet; tighten them once they are.
"""

from __future__ import annotations

# stage → (metric, {precision: limit}); limit None = reported, not enforced.
THRESHOLDS: dict[str, tuple[str, dict[str, float | None]]] = {
    "denoiser": ("rel_l2", {"fp32": 1e-5, "fp16": 1e-2}),
    "guided eps": ("rel_l2", {"fp32": 3e-5, "fp16": 3e-2}),
    "step": ("rel_l2", {"fp32": 1e-5, "fp16": 1e-2}),
    "final latents": ("rel_l2", {"fp32": 1e-4, "fp16": 5e-2}),
    "images psnr": ("psnr_db", {"fp32": 50.0, "fp16": 30.0}),
    "images max": ("max_abs_u8", {"fp32": 8.0, "fp16": None}),
}

STAGES = tuple(THRESHOLDS)


def limit(stage: str, precision: str) -> float | None:
    return THRESHOLDS[stage][1][precision]


def metric(stage: str) -> str:
    return THRESHOLDS[stage][0]


def passes(metric_name: str, value: float, lim: float | None) -> bool:
    """NaN never passes; PSNR is a lower limit, the rest upper limits."""
    if lim is None:
        return True
    if metric_name == "psnr_db":
        return bool(value >= lim)
    return bool(value <= lim)


def table_text() -> str:
    """The table as printed by `verify --thresholds` and quoted in the README."""
    lines = [f"{'stage':<15} {'metric':<11} {'fp32':>9} {'fp16':>9}"]
    for stage, (m, lims) in THRESHOLDS.items():
        cells = []
        for p in ("fp32", "fp16"):
            v = lims[p]
            cells.append("report" if v is None else (f"≥ {v:g}" if m == "psnr_db" else f"≤ {v:g}"))
        lines.append(f"{stage:<15} {m:<11} {cells[0]:>9} {cells[1]:>9}")
    return "\n".join(lines)
