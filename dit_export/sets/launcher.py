"""Which shard this process is: `--shard I/N`, torchrun's or Slurm's variables; one GPU per local rank."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dit_export.errors import UserError


@dataclass(frozen=True)
class Shard:
    """Process `index` of `count`; `source` says where it came from (for the log line)."""

    index: int
    count: int
    source: str = "--shard"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserError(f"shard {self.index}/{self.count} ({self.source}): need 0 ≤ I < N")

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def chunks(self, num_chunks: int) -> range:
        """The global chunk indices this shard writes (round-robin)."""
        return range(self.index, num_chunks, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`I/N` (0-based I) → Shard."""
    parts = str(text).split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--shard {text!r}: expected I/N, e.g. 0/8 (shard I of N, 0-based)") from None
    return Shard(index, count, "--shard")


def _env_int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise UserError(f"environment variable {key}={env[key]!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str] = os.environ) -> Shard:
    """torchrun's RANK/WORLD_SIZE, else a Slurm array × tasks, else Slurm's tasks, else 0/1.

    In a Slurm array (`--array=0-(A-1)`) with T tasks per job, shard = array task × T + task id,
    of A × T.
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        return Shard(_env_int(env, "RANK"), _env_int(env, "WORLD_SIZE"), "RANK/WORLD_SIZE")
    procid = _env_int(env, "SLURM_PROCID") if "SLURM_PROCID" in env else 0
    ntasks = _env_int(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else 1
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = _env_int(env, "SLURM_ARRAY_TASK_ID")
        first = _env_int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        tasks = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        return Shard((task - first) * ntasks + procid, tasks * ntasks, "SLURM_ARRAY_TASK_ID × SLURM_PROCID")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return Shard(procid, ntasks, "SLURM_PROCID/SLURM_NTASKS")
    return Shard(0, 1, "no launcher variables")


def pin_gpu(env: Mapping[str, str] = os.environ) -> str | None:
    """Give each process on a machine its own GPU: CUDA_VISIBLE_DEVICES ← the LOCAL_RANK-th device.

    Uses LOCAL_RANK (torchrun) or SLURM_LOCALID; leaves CUDA_VISIBLE_DEVICES alone when it already
    names one device (the launcher bound the GPU). Must run before any CUDA library initialises.
    Returns what it did, for the log, or None.
    """
    key = "LOCAL_RANK" if "LOCAL_RANK" in env else "SLURM_LOCALID" if "SLURM_LOCALID" in env else None
    if key is None:
        return None
    local = _env_int(env, key)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local)
        return f"CUDA_VISIBLE_DEVICES={local} ({key})"
    devices = [d for d in visible.split(",") if d.strip()]
    if len(devices) <= 1:
        return None
    if local >= len(devices):
        raise UserError(f"{key}={local} but CUDA_VISIBLE_DEVICES lists {len(devices)} devices")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[local]
    return f"CUDA_VISIBLE_DEVICES={devices[local]} ({key} {local} of {visible})"
