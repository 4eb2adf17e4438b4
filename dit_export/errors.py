"""The one exception type that the CLI turns into a one-line message (no traceback)."""


class UserError(Exception):
    """A mistake in the user's inputs or environment, reported as one line, exit code 2."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """What a one-line message quotes of a library's error: its first non-blank line (the type's
    name when it has none), cut to `limit` characters with "..."."""
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
