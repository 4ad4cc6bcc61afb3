"""Where the command line may write: an output path is a regular file to replace, or a new one, never an input.

The model tools write their result to a temporary file and rename it over ``--out``. A rename replaces whatever
node has that name, so the path is checked first, before any work:

- an empty name, or one ending in a path separator, is not a file name;
- a symlink is followed: the file it points to is what gets written, and the link stays;
- an existing target must be a regular file: a directory, a FIFO, a device or a socket is refused (renaming over
  ``/dev/null`` would put a file in its place);
- the target must not be one of the command's inputs (``--weights``, ``--data``), whether it is named directly,
  through a symlink or by a hard link: writing it would replace the input the result was computed from;
- its directory must exist and be writable.

Every refusal is an :class:`OutputPathError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = ["OutputPathError", "resolve_output"]

#: What ``stat`` calls each kind of node that is not a regular file, for the message.
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class OutputPathError(ValueError):
    """An output path that must not be written; the message says why in one line."""


def resolve_output(path: str | os.PathLike[str], *, option: str = "--out",
                   inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> Path:
    """The regular file to write for ``option path``: ``path`` itself, or the file a symlink there points to.

    ``inputs`` are (option, path) pairs of the files the command reads; ``None`` paths are skipped. Raises
    :class:`OutputPathError` for an empty name, a name ending in a separator, an existing node that is not a
    regular file, an input, or a missing or unwritable directory.
    """
    text = os.fspath(path)
    fix = "give a file name ending in .pt or .safetensors"
    if not text:
        raise OutputPathError(f"{option} is empty; {fix}")
    shown = f"{option} {text!r}"
    if text.endswith((os.sep, os.altsep or os.sep)):
        raise OutputPathError(f"{shown} ends in a path separator, so it names a directory; {fix}")
    # Only the last component matters: a symlink there would be replaced by the rename, so it is followed.
    linked = os.path.islink(text)
    target = Path(os.path.realpath(text)) if linked else Path(text)
    if linked:
        shown += f" (a symlink to {str(target)!r})"
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    except OSError as err:  # a symlink loop, a path through a file, ...
        raise OutputPathError(f"cannot write {shown}: {err.strerror}") from None
    if info is not None and stat.S_ISLNK(info.st_mode):  # realpath stops at a loop and leaves a link
        raise OutputPathError(f"cannot write {shown}: it is a symlink loop")
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputPathError(f"{shown} is a directory; {fix}")
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        raise OutputPathError(f"{shown} is {kind}, not a regular file, and writing would replace it; {fix}")
    if info is not None:
        for name, source in inputs:
            if source is not None and _same_file(target, source):
                how = "is" if os.path.realpath(source) == os.path.realpath(target) else "is a hard link to"
                raise OutputPathError(f"{shown} {how} the {name} file {os.fspath(source)!r}: writing it would "
                                      f"replace the input; give another file name")
    parent = target.parent
    where = f"{text!r}" + (f" (a symlink to {str(target)!r})" if linked else "")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {where}: directory {str(parent)!r} does not exist")
    # Checked before the work, so that a long fold or recalibration does not end in a failed write.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {where}: directory {str(parent)!r} is not writable")
    return target


def _same_file(target: Path, source: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(target, source)
    except OSError:  # the input does not exist (yet): nothing to protect
        return False
