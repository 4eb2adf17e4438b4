"""The samplers and schedule tables of an export folder: the manifest's record plus the
`schedules.json` sidecar that `python -m dit_export schedules --add` writes beside it.

`schedule.samplers.<name>` of the manifest records a sampler's table layout as the sampler
registry states it (`SamplerSpec.record()`: kind, spacing, min_steps, state pairs, multistep,
draws_noise, the coef columns it writes); `schedule.tables.<name>.<steps>` holds rows in the
folder's `coef_names` order. Both runtimes take every sampler fact from these records (the C++
runtime names no sampler). Records of exports made before `draws_noise` / `multistep` / `coefs`
existed read as: draws noise unless kind is "ode", multistep when it has state, all columns.

The sidecar adds tables (and the records of samplers the manifest does not list, when the
folder's dit_step can run them) without rewriting the manifest:

    {"schema": "dit_export.schedules/1", "manifest_sha256": <sha256 of manifest.json>,
     "coef_names": [...], "samplers": {name: record},
     "tables": {name: {steps: {"spec", "timesteps", "coefs", "sha256"}}}}

A table's sha256 is over its timesteps as little-endian int64 then its rows as little-endian
float32 (row-major), so an edited value is refused by both readers; a sidecar written for another
manifest.json (the folder was re-exported) is refused too. It is written atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dit_export.errors import UserError
from dit_export.export.manifest import FILENAME, Manifest, ScheduleTable, ScheduleTables
from dit_export.export.manifest.schedules import _schedule_problems
from dit_export.export.outdir import export_lock
from dit_export.fileio import read_json_object, sha256_file, write_json
from dit_export.sampling import samplers
from dit_export.sampling.schedule import COEF_NAMES, NUM_TRAIN_STEPS, STATE_NAMES

SIDECAR = "schedules.json"
SIDECAR_SCHEMA = "dit_export.schedules/1"
SCHEDULE_RULE = (
    "IDDPM linear betas 1e-4..0.02 over 1000 steps, respaced ('N': even sections with Python round; "
    "'ddimN': smallest integer stride giving N steps), coefficients recomputed on the kept chain in "
    "float64 and cast to float32; rows in loop order (t high → 0); see dit_export/sampling/schedule.py "
    "and the sampler registry dit_export/sampling/samplers/"
)


def add_command(folder: object, sampler: str, steps: object = "STEPS") -> str:
    return f"python -m dit_export schedules --engines {folder} --add {sampler}:{steps}"


def table_digest(timesteps: np.ndarray, coefs: np.ndarray) -> str:
    """sha256 of the timesteps (little-endian int64) then the rows (little-endian float32, row-major)."""
    h = hashlib.sha256(np.ascontiguousarray(timesteps, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(coefs, dtype="<f4").tobytes())
    return h.hexdigest()


def _table(spec: samplers.SamplerSpec, steps: int, coef_names: tuple[str, ...]) -> ScheduleTable:
    s = spec.schedule(steps)
    return ScheduleTable(spec.name, int(steps), s.spec, s.timesteps, spec.layout(s.coefs, coef_names))


def export_tables(extra: Iterable[tuple[str, int]] = ()) -> ScheduleTables:
    """The schedule section of a new export: every registered sampler's record and its
    `stored_steps` tables, plus the (sampler, steps) pairs of `extra` (`export --schedules`)."""
    wanted: dict[str, list[int]] = {s.name: list(s.stored_steps) for s in samplers.all_specs()}
    for name, steps in extra:
        spec = samplers.get(name)
        steps = int(spec.check_steps(int(steps)))
        if steps not in wanted[spec.name]:
            wanted[spec.name].append(steps)
    tables = {
        name: {steps: _table(samplers.get(name), steps, COEF_NAMES) for steps in counts}
        for name, counts in wanted.items()
    }
    return ScheduleTables(COEF_NAMES, NUM_TRAIN_STEPS, SCHEDULE_RULE, tables, samplers.records())


@dataclass(frozen=True)
class FolderSchedules:
    """What a runtime may sample from one folder: sampler records and stored tables (manifest + sidecar)."""

    folder: Path
    coef_names: tuple[str, ...]
    state_inputs: tuple[str, ...]  # the solver-state inputs of its dit_step
    samplers: Mapping[str, Mapping]
    tables: Mapping[str, Mapping[int, ScheduleTable]]

    @classmethod
    def of(cls, folder: str | Path, manifest: Manifest) -> FolderSchedules:
        s = manifest.schedule
        recs, tables = dict(s.samplers), {k: dict(v) for k, v in s.tables.items()}
        side = read_sidecar(folder, manifest)
        if side is not None:
            for k, v in side.tables.items():
                tables.setdefault(k, {}).update(v)
            recs = {**side.samplers, **recs}
        state = tuple(n for n in manifest.graph("dit_step").input_names if n in STATE_NAMES)
        return cls(Path(folder), tuple(s.coef_names), state, recs, tables)

    def record(self, sampler: str) -> Mapping:
        """The folder's record of `sampler`; a one-line UserError naming the fix when it has none."""
        rec = self.samplers.get(sampler)
        if rec is not None:
            return rec
        spec = samplers.get(sampler)  # an unknown name: the registry's one error
        why = spec.support_problem(self.coef_names, self.state_inputs)
        if why:
            raise UserError(f"{self.folder} cannot run {spec.name}: {why}; re-export it to use {spec.name}")
        raise UserError(
            f"{self.folder} does not record the sampler {spec.name} (it has {', '.join(sorted(self.samplers))}): "
            f"`{add_command(self.folder, spec.name)}` adds it when its dit_step can run it (else re-export)"
        )

    def draws_noise(self, sampler: str) -> bool:
        rec = self.record(sampler)
        return bool(rec.get("draws_noise", rec.get("kind") != "ode"))

    def stored_table(self, sampler: str, steps: int) -> ScheduleTable | None:
        return self.tables.get(sampler, {}).get(int(steps))

    def rows(self, sampler: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, rows in this folder's layout): the stored table, else the registry's rows."""
        self.record(sampler)
        t = self.stored_table(sampler, steps)
        if t is not None:
            return t.timesteps, t.coefs
        return samplers.get(sampler).table(int(steps), self.coef_names)

    def stored(self) -> dict[str, tuple[int, ...]]:
        return {s: tuple(sorted(v)) for s, v in sorted(self.tables.items())}

    def stored_text(self) -> str:
        """ "ddim 10,25,50; ddpm 25,50,100,250" (the C++ runtime writes the same)."""
        return "; ".join(f"{s} {','.join(map(str, v))}" for s, v in self.stored().items()) or "none"

    def describe(self) -> list[str]:
        """One line per sampler, in name order (the C++ runtime's dit_describe_samplers says the same)."""
        out = []
        for name, rec in sorted(self.samplers.items()):
            draws = rec.get("draws_noise", rec.get("kind") != "ode")
            multi = ", multistep" if rec.get("multistep", bool(rec.get("state"))) else ""
            stored = ",".join(str(k) for k in sorted(self.tables.get(name, {}))) or "none"
            out.append(
                f"{name}: {rec.get('kind')}{multi}, {'draws noise' if draws else 'no step noise'}, "
                f">= {rec.get('min_steps', 1)} steps; stored steps {stored}"
            )
        return out


def read_sidecar(folder: str | Path, manifest: Manifest) -> ScheduleTables | None:
    """The tables and records `schedules --add` stored beside the manifest (None when none), checked:
    schema, this manifest.json's sha256, the coef layout, every table's sha256 and its rows."""
    folder = Path(folder)
    path = folder / SIDECAR
    if not path.exists():
        return None
    raw = read_json_object(path, "a schedules record")
    fix = f"delete it and add the tables again with `{add_command(folder, 'SAMPLER')}`"
    if raw.get("schema") != SIDECAR_SCHEMA:
        raise UserError(f"{path}: schema {raw.get('schema')!r} is not {SIDECAR_SCHEMA}; {fix}")
    if raw.get("manifest_sha256") != sha256_file(folder / FILENAME):
        raise UserError(f"{path} was written for another {FILENAME} (the folder was re-exported): {fix}")
    k = tuple(manifest.schedule.coef_names)
    if tuple(raw.get("coef_names", ())) != k:
        raise UserError(f"{path}: field 'coef_names' differs from {FILENAME}'s; {fix}")
    recs, tabs = raw.get("samplers"), raw.get("tables")
    if not isinstance(recs, dict) or not isinstance(tabs, dict):
        raise UserError(f"{path}: fields 'samplers' and 'tables' should be objects; {fix}")
    for sampler, by_steps in tabs.items():
        for steps, t in by_steps.items() if isinstance(by_steps, dict) else [("?", None)]:
            ok = (
                isinstance(t, dict)
                and steps.isdigit()
                and isinstance(t.get("timesteps"), list)
                and isinstance(t.get("coefs"), list)
                and len(t["timesteps"]) == len(t["coefs"]) == int(steps)
                and all(isinstance(r, list) and len(r) == len(k) for r in t["coefs"])
            )
            if not ok:
                raise UserError(
                    f"{path}: field 'tables.{sampler}.{steps}' should hold {steps} timesteps and rows of {len(k)} values"
                )
    side = ScheduleTables.from_dict(
        {
            "coef_names": k,
            "num_train_steps": manifest.schedule.num_train_steps,
            "rule": "",
            "tables": tabs,
            "samplers": recs,
        }
    )
    for sampler, by_steps in side.tables.items():
        for steps, t in by_steps.items():
            if tabs[sampler][str(steps)].get("sha256") != table_digest(t.timesteps, t.coefs):
                raise UserError(
                    f"{path}: the {sampler} table for {steps} steps does not match its sha256 (edited after "
                    f"`schedules --add`?): delete the file and add it again with `{add_command(folder, sampler, steps)}`"
                )
    problems = list(_schedule_problems(side, manifest.graphs.get("dit_step")))
    problems += [
        f"the {s} tables have no sampler record (neither in {FILENAME} nor here)"
        for s in side.tables
        if s not in recs and s not in manifest.schedule.samplers
    ]
    if problems:
        raise UserError(f"{path}: {problems[0]}")
    return side


def add_tables(folder: str | Path, wanted: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Store the (sampler, steps) tables the folder lacks in its sidecar; returns the ones added.
    A sampler its dit_step cannot run (a state input or coef column it lacks) is refused in one line
    ("re-export"); the manifest is never rewritten. Holds the folder's export lock (one writer)."""
    folder = Path(folder)
    with export_lock(folder):
        return _add_tables(folder, wanted)


def _add_tables(folder: Path, wanted: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    m = Manifest.read(folder, check_graphs=False)
    have = FolderSchedules.of(folder, m)
    side = read_sidecar(folder, m)
    recs = dict(side.samplers) if side else {}
    tables = {s: dict(v) for s, v in side.tables.items()} if side else {}
    step_inputs = m.graph("dit_step").input_names
    added: list[tuple[str, int]] = []
    for name, steps in wanted:
        spec = samplers.get(name)
        steps = int(spec.check_steps(int(steps)))
        if spec.name not in have.samplers:
            why = spec.support_problem(m.schedule.coef_names, step_inputs)
            if why:
                raise UserError(f"{folder} cannot run {spec.name}: {why}; re-export it to use {spec.name}")
            recs[spec.name] = spec.record()
        if have.stored_table(spec.name, steps) is not None or (spec.name, steps) in added:
            continue
        tables.setdefault(spec.name, {})[steps] = _table(spec, steps, tuple(m.schedule.coef_names))
        added.append((spec.name, steps))
    if added:
        write_json(
            folder / SIDECAR,
            {
                "schema": SIDECAR_SCHEMA,
                "manifest_sha256": sha256_file(folder / FILENAME),
                "coef_names": list(m.schedule.coef_names),
                "samplers": recs,
                "tables": {
                    s: {
                        str(k): {**t.to_dict(), "sha256": table_digest(t.timesteps, t.coefs)}
                        for k, t in sorted(v.items())
                    }
                    for s, v in tables.items()
                },
            },
            allow_nan=False,
        )
    return added
