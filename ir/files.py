"""Writing output files without overwriting what a user already has (one rule for every writer)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_writable", "write_new"]


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """``path`` as a Path, its parent folders created.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
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
