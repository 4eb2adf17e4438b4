"""The manifest's schedule records: the samplers a folder supports (`samplers`: each one's
`SamplerSpec.record()` from the sampler registry — kind, spacing, min_steps, state pairs, multistep,
draws_noise, the coef columns it writes), the stored tables in the `coef_names` layout, and the
rules they follow. Which tables an export stores is the registry's (`SamplerSpec.stored_steps`);
the tables added later by `schedules --add` and the runtimes' merged view are in
`dit_export.export.schedule_tables`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dit_export.errors import UserError

if TYPE_CHECKING:
    from dit_export.export.manifest.records import GraphSpec


@dataclass(frozen=True, eq=False)
class ScheduleTable:
    """The rows a sampler loop feeds: timesteps int64 (S,), coefs float32 (S, K), in loop order."""

    sampler: str
    steps: int
    spec: str
    timesteps: np.ndarray
    coefs: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScheduleTable):
            return NotImplemented
        return (self.sampler, self.steps, self.spec) == (other.sampler, other.steps, other.spec) and (
            np.array_equal(self.timesteps, other.timesteps) and np.array_equal(self.coefs, other.coefs)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "timesteps": [int(t) for t in self.timesteps],
            "coefs": [[float(v) for v in row] for row in self.coefs],
        }


@dataclass(frozen=True)
class ScheduleTables:
    coef_names: tuple[str, ...]
    num_train_steps: int
    rule: str
    tables: Mapping[str, Mapping[int, ScheduleTable]]
    # {sampler: SamplerSpec.record()}: the samplers this folder supports and their table layout
    samplers: Mapping[str, Mapping] = field(default_factory=dict)

    def table(self, sampler: str, steps: int) -> ScheduleTable:
        t = self.tables.get(sampler, {}).get(int(steps))
        if t is None:
            have = "; ".join(f"{s} {','.join(str(k) for k in sorted(v))}" for s, v in self.tables.items())
            raise UserError(
                f"no stored {sampler} table for {steps} steps (stored: {have}); store it with "
                f"`python -m dit_export schedules --engines DIR --add {sampler}:{steps}`"
            )
        return t

    def stored(self) -> dict[str, tuple[int, ...]]:
        return {s: tuple(sorted(v)) for s, v in self.tables.items()}

    def to_dict(self) -> dict:
        return {
            "coef_names": list(self.coef_names),
            "num_train_steps": self.num_train_steps,
            "rule": self.rule,
            "tables": {s: {str(k): t.to_dict() for k, t in v.items()} for s, v in self.tables.items()},
            **({"samplers": {s: dict(v) for s, v in self.samplers.items()}} if self.samplers else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ScheduleTables:
        tables = {
            sampler: {
                int(steps): ScheduleTable(
                    sampler,
                    int(steps),
                    str(t.get("spec", "")),
                    np.asarray(t["timesteps"], dtype=np.int64),
                    np.asarray(t["coefs"], dtype=np.float32).reshape(len(t["coefs"]), len(d["coef_names"])),
                )
                for steps, t in by_steps.items()
            }
            for sampler, by_steps in d["tables"].items()
        }
        samplers = {str(s): dict(v) for s, v in d.get("samplers", {}).items()}
        return cls(tuple(d["coef_names"]), int(d["num_train_steps"]), str(d["rule"]), tables, samplers)


def _check_table_sizes(schedule: Mapping, where: str) -> None:
    """Each stored table has `steps` timesteps and rows of len(coef_names) (before numpy sees them)."""
    k = len(schedule["coef_names"])
    for sampler, by_steps in schedule["tables"].items():
        for steps, t in by_steps.items():
            label = f"schedule.tables.{sampler}.{steps}"
            ts, coefs = t["timesteps"], t["coefs"]
            if len(ts) != int(steps) or len(coefs) != int(steps) or any(len(row) != k for row in coefs):
                raise UserError(
                    f"{where}: field {label!r} should hold {steps} timesteps and coef rows of {k} values"
                )


def _schedule_problems(s: ScheduleTables, step: GraphSpec | None) -> Iterator[str]:
    k = len(s.coef_names)
    coef = step.spec("coef") if step is not None and "coef" in step.input_names else None
    if step is not None and (coef is None or coef.shape != (k,)):
        have = "no input 'coef'" if coef is None else f"input 'coef' of shape {list(coef.shape)}"
        yield f"graphs.dit_step has {have}, schedule has {k} coef_names"
    for sampler, info in s.samplers.items():
        for pair in info.get("state", ()):
            if step is not None and (
                pair["input"] not in step.input_names or pair["output"] not in step.output_names
            ):
                yield f"field 'schedule.samplers.{sampler}.state' names {pair['input']}/{pair['output']}, not I/O of graphs.dit_step"
        for c in info.get("coefs", ()):
            if c not in s.coef_names:
                yield f"field 'schedule.samplers.{sampler}.coefs' names {c!r}, not one of schedule.coef_names"
    for sampler, by_steps in s.tables.items():
        for steps, t in by_steps.items():
            label = f"schedule.tables.{sampler}.{steps}"
            if len(t.timesteps) != steps or t.coefs.shape != (steps, k):
                yield f"field {label!r} should hold {steps} timesteps and coef rows of {k} values"
            elif t.timesteps.size and (t.timesteps.min() < 0 or t.timesteps.max() >= s.num_train_steps):
                yield f"field '{label}.timesteps' leaves 0..{s.num_train_steps - 1}"
            elif not np.isfinite(t.coefs).all():
                yield f"field '{label}.coefs' holds a non-finite value"
