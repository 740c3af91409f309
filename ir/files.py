"""Files in and out, one rule for each: outputs never overwrite what a user already has
(`check_writable`, `write_new`, `check_outputs`); inputs are read only from regular files of a
bounded size, decoded as UTF-8 with the file's name in every refusal (`read_input`)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["MAX_INPUT_BYTES", "InputFileError", "check_outputs", "check_writable", "read_input", "write_new"]

# The largest input file read (a schedule of p = 64, m = 1024 is under 10 MB as JSON).
MAX_INPUT_BYTES = 64 * 2**20


class InputFileError(ValueError):
    """An input file that cannot be read as text: missing, not a regular file, too large, not UTF-8."""


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """``path`` as a Path, its parent folders created.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name (e.g. {path / 'out'}{path.suffix or ''})")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (or --force on the command line) to replace it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_new(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path``, refusing to replace a file unless ``overwrite`` (see `check_writable`)."""
    path = check_writable(path, overwrite)
    with open(path, "w" if overwrite else "x", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def check_outputs(paths, overwrite: bool) -> list[Path]:
    """`check_writable` for each output of one command, and refused when two are the same file
    (the second write would replace the first), all before any work.

    Raises:
        ValueError: two outputs name one file; FileExistsError / IsADirectoryError / OSError: as
            `check_writable`, or a parent folder that cannot be written.
    """
    out: list[Path] = []
    seen: dict[Path, Path] = {}
    for path in paths:
        path = check_writable(path, overwrite)
        key = path.resolve()
        if key in seen:
            raise ValueError(f"{seen[key]} and {path} are the same file; give each output its own name")
        seen[key] = path
        try:  # a trial file: permission bits alone do not tell (root, read-only mounts, /proc)
            fd, trial = tempfile.mkstemp(dir=path.parent, prefix=".pipesynth-check-")
            os.close(fd)
            os.unlink(trial)
        except OSError as err:
            raise PermissionError(f"cannot write {path}: its folder {path.parent} does not take new files "
                                  f"({err.strerror or err})") from None
        out.append(path)
    return out


def read_input(path: str | Path, what: str = "file", limit: int = MAX_INPUT_BYTES) -> str:
    """The text of ``path``, refused clearly when it is missing, a directory, a pipe or device, a
    link loop, larger than ``limit`` bytes, or not UTF-8 (reads at most ``limit + 1`` bytes).

    Raises:
        InputFileError: naming the file, what is wrong and the fix.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{what} {path}: no such file") from None
    except OSError as err:  # a link loop, a name too long, no permission on a folder
        raise InputFileError(f"{what} {path}: cannot be read ({err.strerror or err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(f"{what} {path}: is a directory; give the file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"{what} {path}: is not a regular file (a pipe, socket or device); save it to a file "
                             "first")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise InputFileError(f"{what} {path}: cannot be read ({err.strerror or err})") from None
    if len(data) > limit:
        raise InputFileError(f"{what} {path}: larger than {limit // 2**20} MiB, the most pipesynth reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputFileError(f"{what} {path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
