"""The sampler registry: every sampler is one `SamplerSpec`, and everything else asks it.

A sampler is its name, help text, kind (ancestral / sde / ode; multistep or not), fewest steps,
timestep spacing, the solver state it ping-pongs, whether it draws per-step noise, the coefficient
columns it writes, and `coefficients(steps)` → (timesteps, coefficient rows). Requests, the
schedule, the exporter's stored tables, the CLI's choices and the manifest's per-sampler record
(`record()`, which the Python and C++ runtimes read) all come from here; no other module names a
sampler. Each module of this package registers its samplers on import, and every module here is
imported, so adding a sampler is one new module (see `register`):

    from dit_export.sampling import samplers
    samplers.get("dpm++2m").coefficients(10)   # (timesteps (10,) int64, rows (10, NUM_COEFS) fp32)
    samplers.names()                           # ("ddpm", "ddim", "dpm++2m", "unipc", ...)

numpy only (the runtime uses it without torch).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dit_export.errors import UserError
from dit_export.sampling.schedule import (
    COEF_NAMES,
    COLUMN,
    NUM_TRAIN_STEPS,
    STATE_NAMES,
    Schedule,
    positive_int,
    state_output,
)

__all__ = [
    "KINDS",
    "SamplerSpec",
    "all_specs",
    "get",
    "help_text",
    "make_schedule",
    "names",
    "records",
    "register",
    "unregister",
]

# ancestral: a fresh noise draw per step (DDPM); sde: a stochastic solver (noise per step too);
# ode: only the initial latent is drawn.
KINDS = ("ancestral", "sde", "ode")
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*$")  # no ':' ',' or space: `--schedules NAME:STEPS` splits on them


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler. `rows(steps)` is its math: the `Schedule` for a step count already checked
    against `min_steps` (an int; an IDDPM sampler with `respacing` may also get a spec string)."""

    name: str
    help: str  # one short phrase for --help
    kind: str  # KINDS
    multistep: bool  # uses the multistep update of the step graph (rows with multistep = 1)
    min_steps: int
    spacing: str  # "iddpm" | "ddim" | "linspace" | ... (recorded; the math is in `rows`)
    state: tuple[str, ...]  # the dit_step solver-state inputs it reads (schedule.STATE_NAMES)
    draws_noise: bool  # binds fresh noise at every step (else: zero noise, only the initial latent)
    columns: tuple[str, ...]  # the coef columns its rows may set; every other column is 0
    rows: Callable[[int | str], Schedule]
    respacing: bool = False  # accepts IDDPM respacing specs ("10,20", "ddim50") as steps
    stored_steps: tuple[int, ...] = ()  # step counts whose tables every export stores (C++ runs only stored ones)

    def check_steps(self, steps: object) -> int | str:
        """The step count (or, with `respacing`, spec string) as `rows` takes it; one-line errors."""
        if isinstance(steps, str) and self.respacing:
            return steps  # "N", "N1,N2" or "ddimN": space_timesteps checks it
        if isinstance(steps, str):
            steps = positive_int(steps.strip(), steps)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise UserError(f"steps must be an integer, got {steps!r}")
        steps = int(steps)
        if steps < 1:
            raise UserError(f"steps must be ≥ 1, got {steps}")
        if steps < self.min_steps:
            raise UserError(f"steps {steps}: {self.name} needs at least {self.min_steps} steps")
        if steps > NUM_TRAIN_STEPS:
            raise UserError(f"steps {steps}: at most {NUM_TRAIN_STEPS} (the training steps)")
        return steps

    def schedule(self, steps: int | str) -> Schedule:
        """Timesteps, fp32 rows (layout `schedule.COEF_NAMES`) and the float64 tables behind them."""
        return self.rows(self.check_steps(steps))

    def coefficients(self, steps: int | str) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps int64 (S,), coefficient rows float32 (S, NUM_COEFS)) in loop order."""
        s = self.schedule(steps)
        return s.timesteps, s.coefs

    def table(self, steps: int | str, coef_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`coefficients(steps)` with the rows laid out as `coef_names` (a folder's own column
        order, maybe of an older export): one-line error when a column it needs is not there."""
        ts, rows = self.coefficients(steps)
        return ts, self.layout(rows, coef_names)

    def layout(self, rows: np.ndarray, coef_names: Sequence[str]) -> np.ndarray:
        """Rows of `coefficients` (layout `COEF_NAMES`) in the column order `coef_names`."""
        unknown = [c for c in coef_names if c not in COLUMN]
        if unknown:
            raise UserError(
                f"coefficient column {unknown[0]!r} is unknown to this dit_export: upgrade it to sample this folder"
            )
        dropped = [c for c in COEF_NAMES if c not in coef_names and rows[:, COLUMN[c]].any()]
        if dropped:
            raise UserError(
                f"{self.name} needs coefficient column {dropped[0]!r}, which this folder's dit_step "
                "lacks: re-export it with this dit_export"
            )
        return np.ascontiguousarray(rows[:, [COLUMN[c] for c in coef_names]])

    def support_problem(self, coef_names: Sequence[str], state_inputs: Sequence[str]) -> str | None:
        """Why a dit_step with these coef columns and state inputs cannot run this sampler (None: it can)."""
        for s in self.state:
            if s not in state_inputs:
                return f"its dit_step has no solver-state input {s!r}"
        for c in self.columns:
            if c not in coef_names:
                return f"its dit_step's coef has no column {c!r}"
        return None

    def state_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple((n, state_output(n)) for n in self.state)

    def record(self) -> dict:
        """What the manifest records for this sampler (JSON-able); both runtimes read it."""
        return {
            "kind": self.kind,
            "spacing": self.spacing,
            "min_steps": self.min_steps,
            "state": [{"input": i, "output": o} for i, o in self.state_pairs()],
            "multistep": self.multistep,
            "draws_noise": self.draws_noise,
            "coefs": list(self.columns),
        }


_REGISTRY: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    """Add a sampler (a module of this package at import, or a test); returns it."""
    problems = []
    if not _NAME.match(spec.name):
        problems.append(f"name {spec.name!r} must be lowercase letters, digits, '+', '-' or '.'")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        problems.append(f"{spec.name!r} is registered already")
    if spec.kind not in KINDS:
        problems.append(f"kind {spec.kind!r} is not one of {', '.join(KINDS)}")
    if spec.draws_noise == (spec.kind == "ode"):
        problems.append(f"a {spec.kind} sampler {'draws no' if spec.kind == 'ode' else 'draws'} noise")
    if spec.min_steps < 1:
        problems.append("min_steps must be ≥ 1")
    if any(s < spec.min_steps or s > NUM_TRAIN_STEPS for s in spec.stored_steps):
        problems.append(f"stored_steps must lie in {spec.min_steps}..{NUM_TRAIN_STEPS}")
    problems += [f"state {n!r} is not a dit_step state ({', '.join(STATE_NAMES)})" for n in spec.state if n not in STATE_NAMES]
    problems += [f"column {c!r} is not in schedule.COEF_NAMES" for c in spec.columns if c not in COEF_NAMES]
    if problems:
        raise ValueError(f"sampler {spec.name!r}: " + "; ".join(problems))
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a sampler added by `register` (tests)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered sampler, in registration order (the built-in ones first)."""
    return tuple(_REGISTRY)


def get(name: object) -> SamplerSpec:
    """The sampler called `name`; the one place an unknown name becomes a one-line UserError."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UserError(f"unknown sampler {name!r}{_variant_hint(name)}; choose one of {', '.join(_REGISTRY)}")
    return spec


def _variant_hint(name: object) -> str:
    """For a known sampler plus a suffix that only others have ('ddpm-karras'): say so."""
    if not isinstance(name, str) or "-" not in name:
        return ""
    base, suffix = name.rsplit("-", 1)
    have = [n for n in _REGISTRY if n.endswith(f"-{suffix}")]
    if base not in _REGISTRY or not have:
        return ""
    return f": {base} has no -{suffix} variant (those are {', '.join(have)})"


def make_schedule(steps: int | str, sampler: str = "ddpm") -> Schedule:
    """The `Schedule` of a registered sampler for `steps` (`get(sampler).schedule(steps)`)."""
    return get(sampler).schedule(steps)


def all_specs() -> Iterator[SamplerSpec]:
    return iter(tuple(_REGISTRY.values()))


def help_text() -> str:
    """One line for --help: every sampler with its phrase and fewest steps when above 1."""
    return "; ".join(
        f"{s.name} ({s.help}{f', ≥ {s.min_steps} steps' if s.min_steps > 1 else ''})" for s in all_specs()
    )


def records() -> dict[str, dict]:
    """{name: record()} of every registered sampler (the exporter's manifest section)."""
    return {s.name: s.record() for s in all_specs()}


def _import_modules() -> None:
    """Import the built-in samplers in a fixed order, then any other module of this package."""
    builtin = ("iddpm", "dpmpp2m", "unipc")
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for mod in (*builtin, *(m for m in found if m not in builtin)):
        importlib.import_module(f"{__name__}.{mod}")


_import_modules()
