"""One build per output folder at a time: `filelock` on a file beside the folder.

The lock lives next to the folder (`.<name>.lock`), not in it, because the export stage swaps
the whole folder into place. The lock is an OS file lock (flock / LockFileEx), dropped by the
kernel when the process dies (Ctrl-C, kill -9), so a crashed build never leaves a stale lock.
The holder writes its pid into the file so that a refused build can say who holds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import filelock

from dit_export.errors import UserError
from dit_export.fileio import ensure_writable_dir


def lock_path(folder: Path) -> Path:
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.lock")


class BuildLock:
    """`with BuildLock(folder):` → a one-line UserError at once when another process holds it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self._lock = filelock.FileLock(str(self.path), timeout=0)

    def __enter__(self) -> BuildLock:
        ensure_writable_dir(self.path.parent)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise UserError(self._busy_message()) from None
        try:
            self.path.write_text(f"{os.getpid()}\n")
        except OSError:  # the pid is only for the message of a second build
            pass
        return self

    def _busy_message(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        who = f" (pid {pid})" if pid else ""
        return f"another build of {self.folder} is running{who}; wait for it to finish"

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()
