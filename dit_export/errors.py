"""The one exception type that the CLI turns into a one-line message (no traceback), and Ctrl-C
that is never lost."""


class UserError(Exception):
    """A mistake in the user's inputs or environment, reported as one line, exit code 2."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """What a one-line message quotes of a library's error: its first non-blank line (the type's
    name when it has none), cut to `limit` characters with "..."."""
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def keep_interrupts() -> None:
    """Make Ctrl-C stop the command even when it lands in a finalizer.

    A KeyboardInterrupt raised inside a weakref callback or `__del__` (torch runs many while it
    traces) cannot propagate: Python prints "Exception ignored ... KeyboardInterrupt" and runs on,
    so the interrupt is lost. This `sys.unraisablehook` swallows that one message and sends SIGINT
    to this process again a moment later (from a thread: raised where the hook runs, it would be
    ignored the same way), where it stops the command. Installed once per process.
    """
    import os
    import signal
    import sys
    import threading

    previous = sys.unraisablehook
    if getattr(previous, "keeps_interrupts", False):
        return

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
            again.daemon = True  # never fires into an interpreter that is shutting down
            again.start()
            return
        previous(unraisable)

    hook.keeps_interrupts = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
