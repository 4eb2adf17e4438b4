"""The one exception type that the CLI turns into a one-line message (no traceback)."""


class UserError(Exception):
    """A mistake in the user's inputs or environment, reported as one line, exit code 2."""
