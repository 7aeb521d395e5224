"""Cache entries built once and shared: the embedded checkpoints and the prepared MMLU.

An entry is a directory that one process builds while every other one waits on its lock, and
that appears complete or not at all: it is built beside its place and renamed into it. Each
kind of entry says what makes one unusable (`problem`); an unusable one is rebuilt, with a
warning that says why.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def ensure_entry(path: Path, problem: Callable[[Path], str | None],
                 build: Callable[[Path], None], what: str) -> str:
    """Make the entry at `path` usable, building it into a fresh directory with `build(tmp)`
    when `problem(path)` names a reason; returns "verified", "built" or "rebuilt: <why>"."""
    why = problem(path)
    if why is None:
        return "verified"
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent / f".{path.name}.lock"):
        why = problem(path)  # another process may have built it meanwhile
        if why is None:
            return "verified"
        build_atomically(path, build)
    if why == "missing":
        return "built"
    warnings.warn(f"{path}: {what} rebuilt: {why}", stacklevel=3)
    return f"rebuilt: {why}"


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def follow_umask(root: Path) -> None:
    """Give `root` and everything under it the modes the umask allows: mkdtemp creates 0700
    and safetensors writes 0600, which hides a shared cache or /data from teammates."""
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def build_atomically(path: Path, build: Callable[[Path], None]) -> None:
    """Build into a temporary directory beside `path`, then put it at `path` by renames, so a
    killed build leaves nothing behind and `path` is never half-written."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new."))
    try:
        build(tmp)
        follow_umask(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.")) / "old"
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
