"""One comparison vocabulary: the metrics, the table of limits per stage × precision, one `Row`.

Used by export's check (each graph in ONNX Runtime against the PyTorch fp32 modules), `verify`
(a backend against the PyTorch fp32 reference, stage by stage) and the build summary. numpy only.

Metrics (float64, so the metric adds no rounding of its own):
  rel_l2    ‖a − r‖₂ / ‖r‖₂                      upper limit
  psnr_db   PSNR in dB over uint8 pixels (peak 255)  lower limit
  max_abs   max |a − r| over uint8 pixels          upper limit
A value computed from non-finite numbers (NaN, inf) never passes, and its row says so in words
("non-finite (NaN in 12 of 2048 values of the output)") instead of printing `inf`.

Limits hold for every allowed step count (1 … 1000) and both samplers. Measured worst values,
ONNX Runtime 1.32 CPU against torch 2.13 CPU, batch 2, cfg 4, DDPM (DDIM 2 steps, S/8 fp32: step
6.9e-7) (S/8: random weights, 256 px, tiny random VAE, seeds 0–3 fp32 / 0–1 fp16; tiny-digits:
the shipped trained model, seeds 0–1):

    stage        S/8 fp32   S/8 fp16   digits fp32  digits fp16   limit fp32  limit fp16
    dit          6.0e-7     2.2e-5     2.9e-7       1.6e-4        1e-5        1e-2
    guided_eps   2.2e-6     7.0e-5     1.2e-6       5.7e-4        3e-5        3e-2
    step  1 st   2.0e-8     2.8e-7     3.3e-8       -             1e-4        3e-2
          2 st   7.8e-7     2.5e-5     1.7e-5 (*)   6.9e-3 (*)
          5 st   7.7e-7     2.5e-5     -            -
         10 st   6.7e-7     2.2e-5     2.9e-6       -
         50 st   ~5e-7      8.0e-6     -            -
    latents      ≤ step at every count above (50 st: 9.5e-6 fp16)          1e-4        5e-2
    images PSNR  ≥ 82.7 dB  ≥ 63.5 dB  ≥ 79 dB      ≥ 53.7 dB     ≥ 50 dB     ≥ 30 dB
    images max   1          1          1            3             ≤ 8         report

(*) The step's error depends on the step count: a trained model predicts ε ≈ x at t = 999, so
x₀ = √(1/ᾱ)·x − √(1/ᾱ−1)·ε̂ is a small difference of two large terms, and a big first jump (2
steps: t 999 → 499) carries ε̂'s relative error into the output amplified ~14× (1.2e-6 → 1.7e-5
fp32; 5.7e-4 → 6.9e-3 fp16). One step (x₀ clipped to [−1, 1]) and many small steps amplify
less. The old fixed 1e-5 step limit, set at 50 steps on random weights, therefore failed a
correct tiny-digits fp32 build at `verify --steps 2` (issue 15.5). The step and latents limits
now sit above the worst correct case at any step count (fp32 1e-4: 6× above 1.7e-5; fp16 3e-2:
4.4× above 6.9e-3) and below a broken graph: S/8's dit_step with its largest weight scaled by
1.05 gives step rel-L2 2.1e-4 at 2 steps (fails 1e-4; the old 1e-5 caught it by 21×, but failed
correct builds). dit and guided ε do not depend on the step count and stay tight; they catch a
wrong denoiser at any step count. fp16: ORT's CPU provider runs many fp16 ops in fp32, so CPU
numbers are a lower bound of a GPU engine's; no limit has been measured on a GPU engine yet.

int8 (W8A8 QDQ, issue 22) against the fp32 PyTorch modules, ONNX Runtime 1.32 CPU, measured worst
values (tiny-digits: the trained model, batch 10, cfg 4, seeds 0–1; S/2: random weights, batch 1):

    stage        digits int8              S/2 int8   limit int8   digits fp8 (ORT CPU, emulated)
    dit          7.8e-3                   1.4e-3     3e-2         9.1e-2 (limit 0.2)
    guided_eps   3.0e-2                   6.4e-3     1e-1         1.3e-1 (limit 0.3)
    step  2 st   0.40 (*)                 -          0.6          trajectory steps ≤ 3.4e-2 (int8 1.1e-2)
         10 st   7.1e-2; unipc row 4.5e-2 1.5e-3
         50 st   1.1e-2
    latents      2 st 0.40, 10 st 4.0e-2, 50 st 1.9e-2          0.6
    images PSNR  2 st 19.5 dB, 10 st 41.3 dB, 50 st 46.5 dB     ≥ 15 dB
    vae          1.8e-6 (the decoder stays fp32)                 1e-5

(*) the same first-jump amplification as fp16 (ε̂'s error × ~14 at 2 steps). Quantization error
is a property of the weights and activations, not a bug: these limits catch a broken graph (wrong
scales, a quantized embedding) while passing a correct one at any step count; the quality gate of
int8 is tiny-digits accuracy and FD (benchmarks/results/int8.md). fp8 limits are provisional
(measured only emulated on ONNX Runtime CPU, never on an FP8 GPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
METRICS = ("rel_l2", "psnr_db", "max_abs")
HIGHER_IS_BETTER = frozenset({"psnr_db"})
PSNR_CAP = 999.0  # identical images are +inf dB, which strict JSON cannot hold


@dataclass(frozen=True)
class Limit:
    """One row of the table: a stage, its metric, the limit per precision (None: reported only)."""

    stage: str
    metric: str
    fp32: float | None
    fp16: float | None
    what: str
    int8: float | None = None  # W8A8 QDQ graphs against the fp32 reference (see INT8 below)
    fp8: float | None = None

    def of(self, precision: str) -> float | None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        return getattr(self, precision)


LIMITS: tuple[Limit, ...] = (
    Limit("dit", "rel_l2", 1e-5, 1e-2, "denoiser output, 2N rows (labels, then the null label)", 3e-2, 2e-1),
    Limit("guided_eps", "rel_l2", 3e-5, 3e-2, "classifier-free-guided ε from that output", 1e-1, 3e-1),
    Limit(
        "step", "rel_l2", 1e-4, 3e-2, "one dit_step call (the loop's first step, with its noise)", 0.6, 1.0
    ),
    Limit("latents", "rel_l2", 1e-4, 5e-2, "final latents after the whole loop", 0.6, 1.0),
    Limit("vae", "rel_l2", 1e-5, None, "VAE decoder output on the same latents", 1e-5, 1e-5),
    Limit("vae", "psnr_db", None, 40.0, "VAE decoder output as uint8, same latents"),
    Limit("images", "psnr_db", 50.0, 30.0, "decoded uint8 images after the loop", 15.0, 10.0),
    Limit("images", "max_abs", 8.0, None, "decoded uint8 images after the loop, max |Δ|"),
)
_TABLE = {(lim.stage, lim.metric): lim for lim in LIMITS}
STAGES = tuple(dict.fromkeys(lim.stage for lim in LIMITS))
# the stages `verify` reports (export's check reports dit, guided_eps, step, vae)
VERIFY_STAGES = ("dit", "guided_eps", "step", "latents", "images")


def limit(stage: str, metric: str, precision: str) -> float | None:
    """The limit of (stage, metric) at a precision; KeyError names an unknown pair."""
    try:
        return _TABLE[(stage, metric)].of(precision)
    except KeyError:
        raise KeyError(f"no limit for stage {stage!r} metric {metric!r}") from None


def limits_dict() -> list[dict]:
    """The table as JSON-ready data (what manifests and reports record)."""
    return [
        {"stage": x.stage, "metric": x.metric, **{p: x.of(p) for p in PRECISIONS}, "what": x.what}
        for x in LIMITS
    ]


def _cell(metric: str, v: float | None) -> str:
    if v is None:
        return "report"
    return f"≥ {v:g} dB" if metric in HIGHER_IS_BETTER else f"≤ {v:g}"


def table_text() -> str:
    """The table as `verify --thresholds` prints it and the README quotes it."""
    lines = [f"{'stage':<11} {'metric':<8} {'fp32':>10} {'fp16':>10} {'int8':>10} {'fp8':>10}  what"]
    for x in LIMITS:
        cells = " ".join(f"{_cell(x.metric, x.of(p)):>10}" for p in PRECISIONS)
        lines.append(f"{x.stage:<11} {x.metric:<8} {cells}  {x.what}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ metrics


def _pair(actual: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {r.shape}")
    return a, r


def rel_l2(actual: np.ndarray, reference: np.ndarray) -> float:
    """‖actual − reference‖₂ / ‖reference‖₂; 0 when both are all-zero, inf when only the reference
    is; NaN when either side holds a non-finite value."""
    a, r = _pair(actual, reference)
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        return math.nan
    num = float(np.linalg.norm((a - r).ravel()))
    den = float(np.linalg.norm(r.ravel()))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def max_abs(actual: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute element difference; NaN when either side holds a non-finite value."""
    a, r = _pair(actual, reference)
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        return math.nan
    return float(np.max(np.abs(a - r))) if a.size else 0.0


def psnr(actual: np.ndarray, reference: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements (inf for identical inputs, NaN for
    non-finite ones). For uint8 images keep the default peak 255."""
    a, r = _pair(actual, reference)
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        return math.nan
    mse = float(np.mean((a - r) ** 2)) if a.size else 0.0
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


METRIC_FUNCTIONS = {"rel_l2": rel_l2, "psnr_db": psnr, "max_abs": max_abs}


def finite_or_none(value: float, cap: float | None = None) -> float | None:
    """A JSON-safe number: None for NaN/−inf, `cap` (or None) for +inf, else the value."""
    if math.isnan(value) or value == -math.inf:
        return None
    if value == math.inf:
        return cap
    return float(value)


def nonfinite_note(array: np.ndarray, what: str = "output") -> str:
    """'' when every value is finite, else e.g. 'NaN in 12 of 2048 values of the output'."""
    x = np.asarray(array)
    if not np.issubdtype(x.dtype, np.floating):
        return ""
    finite = np.isfinite(x)
    if finite.all():
        return ""
    nan, total = int(np.isnan(x).sum()), x.size
    inf = int((~finite).sum()) - nan
    parts = ([f"NaN in {nan}"] if nan else []) + ([f"±inf in {inf}"] if inf else [])
    return f"{' and '.join(parts)} of {total} values of the {what}"


# ------------------------------------------------------------------------------ rows


@dataclass(frozen=True)
class Row:
    """One compared quantity: `bool(row)` says whether it passed (NaN never passes)."""

    stage: str
    case: str
    metric: str
    value: float
    limit: float | None  # None: reported, not enforced
    seed: int | None = None
    nonfinite: str = ""  # why the value is not a number ('' when everything was finite)

    @property
    def passed(self) -> bool:
        if self.nonfinite or math.isnan(self.value):
            return False
        if self.limit is None:
            return True
        if self.metric in HIGHER_IS_BETTER:
            return bool(self.value >= self.limit)
        return bool(self.value <= self.limit)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def enforced(self) -> bool:
        return self.limit is not None

    def value_text(self) -> str:
        if self.nonfinite or math.isnan(self.value):
            return f"non-finite ({self.nonfinite or 'NaN'})"
        if self.metric == "psnr_db":
            return "inf dB" if self.value == math.inf else f"{self.value:.2f} dB"
        if self.metric == "max_abs":
            return f"{self.value:.0f}" if math.isfinite(self.value) else "inf"
        return f"{self.value:.3e}"

    def limit_text(self) -> str:
        if self.limit is None:
            return ""
        return f"≥ {self.limit:g} dB" if self.metric in HIGHER_IS_BETTER else f"≤ {self.limit:.0e}"

    def result_text(self) -> str:
        if not self.passed:
            return "FAIL"
        return "ok" if self.enforced else "info"

    def describe(self) -> str:
        """One line for an error message: 'step (t=999 ddpm, seed 0): rel_l2 3.1e-02, limit ≤ 2e-04'."""
        where = self.case + (f", seed {self.seed}" if self.seed is not None else "")
        lim = f", limit {self.limit_text()}" if self.limit is not None else ""
        return f"{self.stage} ({where}): {self.metric} {self.value_text()}{lim}"

    def to_dict(self) -> dict:
        cap = PSNR_CAP if self.metric in HIGHER_IS_BETTER else None
        d = {
            "stage": self.stage,
            "case": self.case,
            "metric": self.metric,
            "value": finite_or_none(self.value, cap),
            "limit": self.limit,
            "passed": self.passed,
        }
        if self.seed is not None:
            d["seed"] = self.seed
        if self.nonfinite:
            d["nonfinite"] = self.nonfinite
        return d


def compare(
    stage: str,
    metric: str,
    actual: np.ndarray,
    reference: np.ndarray,
    precision: str,
    case: str = "",
    seed: int | None = None,
) -> Row:
    """Measure `metric` between two arrays and judge it against the table's limit."""
    note = nonfinite_note(actual) or nonfinite_note(reference, "reference")
    value = METRIC_FUNCTIONS[metric](actual, reference)
    return Row(stage, case, metric, float(value), limit(stage, metric, precision), seed, note)


def first_failure(rows: Iterable[Row]) -> Row | None:
    return next((r for r in rows if not r), None)


def failures(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if not r]


def worst(rows: Sequence[Row], stage: str, metric: str = "rel_l2") -> Row | None:
    """The row of (stage, metric) furthest from passing (non-finite first)."""
    mine = [r for r in rows if r.stage == stage and r.metric == metric]
    if not mine:
        return None
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    return max(mine, key=lambda r: math.inf if math.isnan(r.value) else sign * r.value)


def format_table(rows: Sequence[Row]) -> str:
    """Rows as an aligned table (a seed column when any row has a seed)."""
    with_seed = any(r.seed is not None for r in rows)
    head = f"{'seed':>4}  " if with_seed else ""
    lines = [f"{head}{'stage':<11} {'case':<26} {'metric':<8} {'value':>12} {'limit':>10}  result"]
    for r in rows:
        pre = f"{'' if r.seed is None else r.seed:>4}  " if with_seed else ""
        lines.append(
            f"{pre}{r.stage:<11} {r.case:<26} {r.metric:<8} {r.value_text():>12} {r.limit_text():>10}  "
            f"{r.result_text()}"
        )
    return "\n".join(lines)
