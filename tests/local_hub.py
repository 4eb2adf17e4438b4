"""Test-only: a local Hugging Face Hub on 127.0.0.1 that the real ``huggingface_hub`` client talks to.

Point ``HF_ENDPOINT`` at `LocalHub.endpoint` and the client runs unchanged: the endpoints and headers
are the ones ``huggingface_hub`` reads (checked against the source of 2.4.0, not invented):

- ``GET /api/models/{repo}/revision/{rev}``: the repo info (``sha`` = the commit, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=…``: the listing (``oid`` = git blob sha1,
  ``lfs`` = {oid: sha256, size, pointerSize} for LFS files);
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: a small file is served here with ``ETag`` (its git blob
  sha1), ``X-Repo-Commit`` and ``Content-Length``; an LFS file answers ``302`` to a second server (the
  "CDN", another origin, so the client takes the metadata from the redirect as it does from the real
  Hub) with ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and ``X-Repo-Commit``;
- errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) as the Hub's do.

The same server also hosts plain files under ``/files/`` (the official checkpoints' site, for
``DIT_EXPORT_BASE_URL``). `corrupt(repo, path, how)` makes the server lie about one file: ``"flip"``
serves other bytes of the advertised size, ``"truncate"`` serves a short body with a matching
Content-Length (the advertised size stays in the headers the client checks against).
Every request is recorded in `LocalHub.requests` (method, path), so a test can prove a run stayed
offline.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what makes a run offline or points it elsewhere: removed from the inherited environment
NETWORK_VARS = ("HF_HUB_OFFLINE", "DIT_EXPORT_OFFLINE", "HF_ENDPOINT", "DIT_EXPORT_BASE_URL", "HF_TOKEN")

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    corrupt: dict[str, str] = field(default_factory=dict)  # path -> "flip" | "truncate"

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def served(self, path: str) -> bytes:
        data, how = self.files[path], self.corrupt.get(path)
        if how == "flip":
            return bytes([data[0] ^ 0xFF]) + data[1:]
        if how == "truncate":
            return data[: len(data) // 2]
        return data


class LocalHub:
    """Two ThreadingHTTPServers on 127.0.0.1 (the Hub and its LFS "CDN"); use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.files: dict[str, bytes] = {}  # /files/<name>: the official site stand-in
        self.truncate_files: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self._servers = [self._server("hub"), self._server("cdn")]
        self.endpoint = self._url(self._servers[0])
        self.cdn = self._url(self._servers[1])
        self.files_url = self.endpoint + "/files/"

    # ------------------------------------------------------------------ content
    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Publish `files` (path in repo -> bytes) as one commit of `repo_id`; returns the commit."""
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo_id] = Repo(dict(files), commit)
        return commit

    def corrupt(self, repo_id: str, path: str, how: str) -> None:
        assert how in ("flip", "truncate", None)
        if how is None:
            self.repos[repo_id].corrupt.pop(path, None)
        else:
            self.repos[repo_id].corrupt[path] = how

    def count(self, method: str | None = None) -> int:
        return sum(1 for m, _ in self.requests if method in (None, m))

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalHub:
        for srv in self._servers:
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()

    @staticmethod
    def _url(srv: http.server.ThreadingHTTPServer) -> str:
        return f"http://127.0.0.1:{srv.server_address[1]}"

    def _server(self, role: str) -> http.server.ThreadingHTTPServer:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub, Handler.role = hub, role
        return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: LocalHub
    role: str

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    # ------------------------------------------------------------------ replies
    def _reply(
        self, code: int, data: bytes = b"", body: bool = True, length: int | None = None, **headers
    ) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), str(v))
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _json(self, obj: object, body: bool) -> None:
        self._reply(200, json.dumps(obj).encode(), body, Content_Type="application/json")

    def _error(self, code: int, error_code: str, body: bool, **headers) -> None:
        msg = json.dumps({"error": f"{error_code} (local test Hub)"}).encode()
        self._reply(code, msg, body, X_Error_Code=error_code, Content_Type="application/json", **headers)

    # ------------------------------------------------------------------ routing
    def _route(self, body: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        self.hub.requests.append((self.command, path))
        parts = path.strip("/").split("/")
        if self.role == "cdn":
            return self._cdn(parts, body)
        if parts[0] == "files" and len(parts) == 2:
            return self._file(parts[1], body)
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            return self._api(parts[2:], body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        self._error(404, "NotFound", body)

    def _repo(self, repo_id: str, rev: str, body: bool) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", body)
            return None
        if rev not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", body)
            return None
        return repo

    def _api(self, parts: list[str], body: bool) -> None:
        repo_id, kind, rev, sub = "/".join(parts[:2]), parts[2], parts[3], "/".join(parts[4:])
        repo = self._repo(repo_id, rev, body)
        if repo is None:
            return
        if kind == "revision":
            siblings = [{"rfilename": p} for p in sorted(repo.files)]
            return self._json(
                {"id": repo_id, "sha": repo.commit, "private": False, "siblings": siblings}, body
            )
        if kind != "tree":
            return self._error(404, "NotFound", body)
        entries, folders = [], set()
        for p, data in sorted(repo.files.items()):
            if sub and not p.startswith(sub + "/"):
                continue
            parent = p.rsplit("/", 1)[0] if "/" in p else ""
            while parent and parent != sub:
                folders.add(parent)
                parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
            entry = {"type": "file", "path": p, "size": len(data)}
            if repo.is_lfs(p):
                pointer = lfs_pointer(data)
                entry |= {
                    "oid": git_blob_sha1(pointer),
                    "lfs": {
                        "oid": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": len(pointer),
                    },
                }
            else:
                entry["oid"] = git_blob_sha1(data)
            entries.append(entry)
        entries += [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(folders)]
        self._json(entries, body)

    def _resolve(self, repo_id: str, rev: str, path: str, body: bool) -> None:
        repo = self._repo(repo_id, rev, body)
        if repo is None:
            return
        if path not in repo.files:
            return self._error(404, "EntryNotFound", body, X_Repo_Commit=repo.commit)
        data = repo.files[path]
        if repo.is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            location = f"{self.hub.cdn}/lfs/{repo_id}/{sha}"
            pointer_etag = git_blob_sha1(lfs_pointer(data))
            return self._reply(
                302,
                b"",
                body,
                Location=location,
                ETag=f'"{pointer_etag}"',
                X_Linked_Etag=f'"{sha}"',
                X_Linked_Size=len(data),
                X_Repo_Commit=repo.commit,
            )
        served = repo.served(path)
        self._reply(200, served, body, ETag=f'"{git_blob_sha1(data)}"', X_Repo_Commit=repo.commit)

    def _cdn(self, parts: list[str], body: bool) -> None:
        if len(parts) != 4 or parts[0] != "lfs":
            return self._error(404, "NotFound", body)
        repo = self.hub.repos.get("/".join(parts[1:3]))
        match = [
            p for p, d in (repo.files.items() if repo else []) if hashlib.sha256(d).hexdigest() == parts[3]
        ]
        if not match:
            return self._error(404, "NotFound", body)
        served = repo.served(match[0])
        self._reply(200, served, body, Content_Type="application/octet-stream")

    def _file(self, name: str, body: bool) -> None:
        data = self.hub.files.get(name)
        if data is None:
            return self._reply(404, b"not found", body)
        if name in self.hub.truncate_files:  # advertise the whole file, send half of it
            self._reply(200, data[: len(data) // 2], body, length=len(data))
            self.close_connection = True
            return
        self._reply(200, data, body, Content_Type="application/octet-stream")


# ---------------------------------------------------------------------- running the CLI against it


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused at once: the network is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def network_environ(endpoint: str, files_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    """A CLI environment online (no offline variables) against `endpoint` (the Hub) and `files_url`
    (the official site), with every cache under `tmp`."""
    env = {k: v for k, v in os.environ.items() if k not in NETWORK_VARS}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(
        PYTHONPATH=path,
        HF_ENDPOINT=endpoint,
        DIT_EXPORT_BASE_URL=files_url,
        HF_HOME=str(tmp / "hf_home"),
        DIT_EXPORT_CACHE=str(tmp / "cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        **extra,
    )
    return env


def unreachable_environ(tmp: Path, **extra: str) -> dict[str, str]:
    """Online as far as the program knows, but every server refuses the connection (no internet)."""
    dead = f"http://127.0.0.1:{closed_port()}"
    return network_environ(dead, dead + "/DiT/models/", tmp, **extra)


def run(env: dict[str, str], *args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m dit_export ARGS` in a fresh interpreter with exactly `env`."""
    return subprocess.run(
        [sys.executable, "-m", "dit_export", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, and exactly one `error: ` line, the last one on stderr (a download's
    progress bars may come before it), containing every needle."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]
