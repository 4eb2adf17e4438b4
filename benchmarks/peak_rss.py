"""Run one command; report its wall time and the peak RSS of its whole process tree.

`/usr/bin/time -v` reports the largest single process; `build` exports in a child process, so
the number that matters is the sum over the tree at each moment (sampled every 0.2 s here).

    python benchmarks/peak_rss.py -- python -m dit_export build --model XL/2 --random-weights \
        --vae random-sd --batch 1

Prints one line (and `--json FILE` writes it) with the load average before the run: torch on a
CPU slows many times over when another process holds a core, so a time says the load it ran at.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import psutil


def measure(cmd: list[str], interval: float = 0.2) -> dict:
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak_tree = peak_single = 0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in (root, *root.children(recursive=True))]
        except psutil.Error:  # a process ended between the listing and the read
            rss = []
        if rss:
            peak_tree, peak_single = max(peak_tree, sum(rss)), max(peak_single, max(rss))
        time.sleep(interval)
    return {
        "command": " ".join(cmd),
        "exit_status": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_tree_rss_gb": round(peak_tree / 1e9, 2),
        "peak_single_process_rss_gb": round(peak_single / 1e9, 2),
        "load_average_before": load_before,
        "cpus": psutil.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command after --")
    result = measure(cmd)
    line = (
        f"wall {result['wall_s']} s, peak RSS {result['peak_tree_rss_gb']} GB (process tree; largest single "
        f"process {result['peak_single_process_rss_gb']} GB), exit {result['exit_status']}, load average "
        f"before {result['load_average_before']} on {result['cpus']} CPUs"
    )
    print(line, file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return int(result["exit_status"] != 0)


if __name__ == "__main__":
    sys.exit(main())
