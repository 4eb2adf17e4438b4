"""Facts about the machine this process runs on that more than one stage asks (bench's machine
record, Triton's sizing): kept here, below every stage, so each is defined once."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on (affinity, cpusets; not CPU quotas), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS)
        return max(1, os.cpu_count() or 1)
