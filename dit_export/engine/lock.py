"""One build per output folder at a time: an advisory lock file beside the folder.

The lock lives next to the folder (`.<name>.lock`), not in it, because the export stage swaps
the whole folder into place. `flock` locks are dropped by the kernel when the process dies
(Ctrl-C, kill -9), so a crashed build never leaves a stale lock behind. The file itself stays
(removing it would race with a build that just opened it); it is empty but for the holder's pid.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from dit_export.errors import UserError
from dit_export.fileio import ensure_writable_dir


class BuildLock:
    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        self.path = folder.with_name(f".{folder.name}.lock")
        self.folder = folder
        self._fd: int | None = None

    def __enter__(self) -> BuildLock:
        ensure_writable_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # Windows: msvcrt locks a byte range the same way
            import msvcrt

            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            except OSError:
                os.close(fd)
                raise UserError(self._busy_message()) from None
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                msg = self._busy_message()
                os.close(fd)
                raise UserError(msg) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
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
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing drops the lock
                self._fd = None
