"""Comparison numbers shared by export checks, verify and bench (numpy only, no torch).

Every tolerance in the project is stated in one of these, computed in float64 so the metric
itself adds no rounding of its own.
"""

from __future__ import annotations

import math

import numpy as np


def rel_l2(actual: np.ndarray, reference: np.ndarray) -> float:
    """‖actual − reference‖₂ / ‖reference‖₂ (0 when both are all-zero; inf when only the reference is)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {r.shape}")
    num = float(np.linalg.norm((a - r).ravel()))
    den = float(np.linalg.norm(r.ravel()))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den if math.isfinite(num) else math.inf


def max_abs(actual: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute element difference (inf if either side has a non-finite value there)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {r.shape}")
    if a.size == 0:
        return 0.0
    d = np.abs(a - r)
    return float(np.max(np.where(np.isfinite(d), d, np.inf)))


def psnr(actual: np.ndarray, reference: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements (inf for identical inputs).

    For uint8 images use the default peak 255; the arrays are compared as float64.
    """
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {r.shape}")
    mse = float(np.mean((a - r) ** 2)) if a.size else 0.0
    if not math.isfinite(mse):
        return -math.inf
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def finite_or_none(value: float, cap: float | None = None) -> float | None:
    """A JSON-safe number: None for NaN/−inf, `cap` (or None) for +inf, else the value.

    Strict JSON (and the C++ reader) has no Infinity/NaN; identical images give PSNR = inf.
    """
    if math.isnan(value) or value == -math.inf:
        return None
    if value == math.inf:
        return cap
    return float(value)
