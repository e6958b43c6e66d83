"""The one exception type a user is meant to read.

Raised for anything the user can fix (a path, a key, an override, a run dir). The CLI prints its message
on one line and exits 1; any other exception is a bug and keeps its traceback.
"""


class GanlabError(Exception):
    """A user-fixable problem; the message names the file or key and what was expected."""


def first_line(err: BaseException) -> str:
    """An exception's first message line (its type name if it has none), as one-line reports quote it."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
