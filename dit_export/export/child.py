"""`export` in a fresh interpreter: all its memory goes back to the OS when it ends.

`build` exports this way (`pipeline.EnsureExport`), then verifies in its own process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection

from dit_export.errors import UserError, keep_interrupts
from dit_export.export import exporter

Log = Callable[[str], None]


def export_in_child(options: exporter.ExportOptions, log: Log = print) -> None:
    """`exporter.export` in a fresh interpreter, so that all its memory goes back to the OS before
    verify loads the reference: torch.export and onnxscript keep the last traced graph in module
    globals, and the heap stays fragmented (XL/2 fp16 build on CPU: 8.7 GB peak RSS in one
    process). Progress lines come back through a pipe; errors are raised here as they were there.
    A plain subprocess, not multiprocessing's spawn: that would re-run the caller's script.
    """
    r, w = os.pipe()
    code = (  # our import path first (dit_export is found however we found it), then the options
        "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
        "from dit_export.export.child import _export_child; _export_child(*map(int, sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(w), str(os.getpid())], stdin=subprocess.PIPE, pass_fds=(w,)
    )
    os.close(w)
    recv = Connection(r)
    try:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: reported below
            pickle.dump(sys.path, proc.stdin)
            pickle.dump(options, proc.stdin)
            proc.stdin.close()
        while True:
            try:
                kind, payload = recv.recv()
            except EOFError:  # it died without a word: killed, out of memory
                kind, payload = "died", None
            if kind != "log":
                break
            log(payload)
    except BaseException:  # Ctrl-C here (or a failing log): the export stops too and cleans up
        try:  # a terminal's Ctrl-C reached it too; a second SIGINT could cut its clean-up short
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        raise
    finally:
        proc.wait()
        recv.close()
    if kind == "died":
        raise UserError(f"the export process died (exit status {proc.returncode}); out of memory?")
    if kind == "error":
        raise payload


def _export_child(fd: int, parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent (kill -9)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        return
    keep_interrupts()  # Ctrl-C while torch traces: stop, not lost in a finalizer
    send = Connection(fd)
    try:
        options = pickle.load(sys.stdin.buffer)
        exporter.export(options, log=lambda line: send.send(("log", line)))
        send.send(("done", None))
    except KeyboardInterrupt:
        pass  # the parent was interrupted too and reports it
    except Exception as e:
        try:
            send.send(("error", e))
        except Exception:  # an exception that does not pickle: its type and text
            send.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
