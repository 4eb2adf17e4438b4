"""Start the `tritonserver` of the nvidia-pytriton wheel on 127.0.0.1 (tests, smoke, load benchmark).

    with LocalTriton(repo, venv=".venv-triton") as server:    # free ports, bounded lifetime
        client = tritonclient.http.InferenceServerClient(server.http_url)

The wheel ships Triton with the Python backend only (all the sampler model needs). Its stub runs
the first `python` on PATH and needs numpy < 2, so the server runs in its own environment (made by
`bash scripts/triton_smoke.sh --setup`). Like pytriton's own launcher, this puts the wheel's
bundled libraries on LD_LIBRARY_PATH, copies the stub for the environment's Python into
backends/python/, and passes --backend-directory/--cache-directory. The server listens on
127.0.0.1 only, runs under `timeout` (it stops by itself), and is stopped on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from dit_export.errors import UserError
from dit_export.fileio import atomic_path

LOOPBACK = "127.0.0.1"  # the only address the server ever listens on


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise UserError(
            f"{venv} has no tritonserver (nvidia-pytriton): run `bash scripts/triton_smoke.sh --setup`"
        )
    return found[-1].parents[3]


def engine_runs(metrics_text: str, model: str = "dit_sampler") -> dict[int, int]:
    """{rows filled: engine runs} summed over instances, from the `dit_sampler_engine_runs` counter."""
    runs: dict[int, int] = {}
    for line in metrics_text.splitlines():
        if line.startswith("dit_sampler_engine_runs{") and f'model="{model}"' in line:
            labels, value = line.rsplit(" ", 1)
            rows = int(labels.split('rows="', 1)[1].split('"', 1)[0])
            runs[rows] = runs.get(rows, 0) + int(float(value))
    return runs


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalTriton:
    """A tritonserver on 127.0.0.1 serving `repo`; `start()` waits until every model is ready."""

    def __init__(
        self,
        repo: str | os.PathLike,
        venv: str | os.PathLike,
        *,
        limit_s: int = 600,
        log: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        metrics: bool = False,
    ) -> None:
        self.repo, self.venv = Path(repo).resolve(), Path(venv).resolve()
        self.limit_s, self.extra_env = limit_s, dict(env or {})
        self.log_path = Path(log) if log else self.repo.parent / "tritonserver.log"
        self.proc: subprocess.Popen | None = None
        self.metrics = metrics  # the Prometheus endpoint (custom metrics of model.py), 127.0.0.1 too
        self.http_port = self.grpc_port = self.metrics_port = 0

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    def read_metrics(self) -> str:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def _command(self) -> tuple[list[str], dict[str, str]]:
        sp = _site_packages(self.venv)
        ts = sp / "pytriton" / "tritonserver"
        stub = ts / "backends" / "python" / "triton_python_backend_stub"
        if not stub.exists():
            pyver = subprocess.run(
                [str(self.venv / "bin" / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            src = ts / "python_backend_stubs" / pyver / "triton_python_backend_stub"
            if not src.exists():
                raise UserError(f"nvidia-pytriton has no Python-backend stub for Python {pyver}")
            with atomic_path(stub) as tmp:  # two servers starting at once never see half a stub
                shutil.copy2(src, tmp)
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        env = {**os.environ, **self.extra_env}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"  # the stub runs this python
        libs = str(sp / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = libs + (f":{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else "")
        cmd = ["timeout", "-k", "10", str(self.limit_s), str(ts / "bin" / "tritonserver")]
        cmd += ["--model-repository", str(self.repo)]
        cmd += ["--backend-directory", str(ts / "backends"), "--cache-directory", str(ts / "caches")]
        cmd += ["--http-address", LOOPBACK, "--http-port", str(self.http_port)]
        cmd += ["--grpc-address", LOOPBACK, "--grpc-port", str(self.grpc_port)]
        if self.metrics:
            cmd += ["--allow-metrics", "true", "--allow-gpu-metrics", "false", "--allow-cpu-metrics", "false"]
            cmd += ["--metrics-address", LOOPBACK, "--metrics-port", str(self.metrics_port)]
        else:
            cmd += ["--allow-metrics", "false"]
        cmd += ["--exit-timeout-secs", "10", "--strict-readiness", "true"]
        return cmd, env

    def start(self, ready_timeout: float = 180.0) -> float:
        """Start the server; seconds until it reports ready (RuntimeError with the log's tail if not)."""
        cmd, env = self._command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            while time.monotonic() - t0 < ready_timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"tritonserver exited ({self.proc.returncode}) before ready:\n{self.log_tail()}"
                    )
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            return time.monotonic() - t0
                except OSError:
                    pass
                time.sleep(0.25)
        except BaseException:  # Ctrl-C while waiting (`with` never reaches __exit__): no orphan server
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {ready_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)

    def __enter__(self) -> LocalTriton:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
