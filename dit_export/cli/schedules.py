"""`schedules --engines DIR [--add SAMPLER:STEPS ...]`: list or add a folder's stored schedule tables.

The schedule math stays in Python (the sampler registry); the C++ runtime samples only the step
counts whose tables are stored. `--add` stores more in the sidecar `schedules.json` beside the
manifest (never rewritten): the tables in the folder's coefficient layout, each with its sha256,
bound to this manifest.json by its sha256, written atomically. Both runtimes read it.
"""

from __future__ import annotations

import argparse

from dit_export.errors import UserError
from dit_export.sampling import samplers


def parse_schedule(text: str) -> tuple[str, int]:
    """SAMPLER:STEPS, e.g. dpm++2m:12 → ("dpm++2m", 12), checked by the sampler registry (name, fewest steps)."""
    name, sep, steps = str(text).rpartition(":")
    if not sep or not name or not steps.strip().isdigit() or int(steps) < 1:
        raise UserError(f"bad schedule {text!r}: expected SAMPLER:STEPS, e.g. dpm++2m:12")
    spec = samplers.get(name.strip())
    return spec.name, int(spec.check_steps(int(steps)))


def schedule_arg(text: str) -> tuple[str, int]:
    """argparse type of SAMPLER:STEPS (a bad one: `error: argument --schedules: ...`, exit 2)."""
    try:
        return parse_schedule(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub) -> None:
    p = sub.add_parser(
        "schedules",
        help="list or add the schedule tables of an exported folder (what the C++ runtime can sample)",
        description="List the samplers an exported folder supports and the step counts stored for each; "
        "--add stores more tables (computed here, in the folder's coefficient layout) in the sidecar "
        "schedules.json, which the Python and C++ runtimes read with the manifest (hash-checked). "
        f"Samplers: {samplers.help_text()}.",
    )
    p.add_argument("--engines", required=True, metavar="DIR", help="an exported folder (with manifest.json)")
    p.add_argument(
        "--add",
        nargs="+",
        type=schedule_arg,
        default=[],
        metavar="SAMPLER:STEPS",
        help="tables to store, e.g. --add dpm++2m:12 ddim:30 (already stored ones are skipped)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dit_export.export.manifest import Manifest
    from dit_export.export.schedule_tables import FolderSchedules, add_tables

    wanted = list(args.add)
    if wanted:
        added = add_tables(args.engines, wanted)
        for sampler, steps in wanted:
            what = "added" if (sampler, steps) in added else "already stored"
            print(f"{sampler} {steps} steps: {what}")
    m = Manifest.read(args.engines, check_graphs=False)
    print(f"samplers of {args.engines}:")
    for line in FolderSchedules.of(args.engines, m).describe():
        print(f"  {line}")
    return 0
