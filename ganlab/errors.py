"""The one exception type a user is meant to read.

Raised for anything the user can fix (a path, a key, an override, a run dir). The CLI prints its message
on one line and exits 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys

# File-system refusals the user can act on (write elsewhere, free space, fix permissions), in their words.
OS_ERROR_CAUSES = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.ENOTDIR: "not a folder (a file is in the way)",
}


# A ValueError: a user-fixable value problem, and existing callers catching ValueError keep working.
class GanlabError(ValueError):
    """A user-fixable problem; the message names the file or key and what was expected."""


def first_line(err: BaseException) -> str:
    """An exception's first message line (its type name if it has none), as one-line reports quote it."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def os_error(err: BaseException, path: str | os.PathLike | None = None, doing: str = "") -> GanlabError | None:
    """`<path>: [<doing>: ]<cause>` for a file-system refusal in OS_ERROR_CAUSES (read-only, disk full,
    permission denied, ...), naming `path` if given (the file meant, not a temp name), else the error's own
    file name; None for any other error, which stays a bug with its traceback."""
    if not isinstance(err, OSError) or err.errno not in OS_ERROR_CAUSES:
        return None
    cause = f"{doing}: {OS_ERROR_CAUSES[err.errno]}" if doing else OS_ERROR_CAUSES[err.errno]
    name = path if path is not None else err.filename
    if name is None:  # e.g. a write() that hit a full disk: the OS names no file
        return GanlabError(f"{cause} ({first_line(err)})")
    return GanlabError(f"{os.fsdecode(name)}: {cause}")


def warn(message: str) -> None:
    """One line on stderr, `ganlab: warning: <message>`: something was skipped that the user should know of."""
    print(f"ganlab: warning: {message}", file=sys.stderr)
