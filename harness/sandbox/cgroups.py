"""The pids cgroup each sandboxed run gets where the kernel lets this process make one: as
root RLIMIT_NPROC is not enforced, so this is what stops a fork bomb at `Limits.processes`."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path


@cache
def pids_cgroups() -> Path | None:
    """A directory in which this process can make pids cgroups and move a child into them, or
    None: cgroup v1's pids hierarchy, or under cgroup v2 this process's own cgroup where it
    enables the pids controller for its children (so a program stays inside every limit the
    harness itself runs under). Found once, by trying (run_many's threads may try at once:
    each probe group has a name of its own)."""
    return next(filter(_can_use, _pids_candidates()), None)


def _pids_candidates() -> list[Path]:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    v2 = next((line.split(":", 2)[2] for line in own if line.startswith("0::")), None)
    found = []
    for line in mounts:
        fields = line.split()
        if len(fields) < 4:
            continue
        root, kind, options = Path(fields[1]), fields[2], fields[3].split(",")
        if kind == "cgroup" and "pids" in options:
            found.append(root)
        elif kind == "cgroup2" and v2 is not None:
            own_dir = root / v2.lstrip("/")
            if "pids" in _read(own_dir / "cgroup.subtree_control").split():
                found.append(own_dir)
    return found


def _can_use(root: Path) -> bool:
    """Whether a cgroup made in `root` takes a child process (which `/bin/true` then ends)."""
    group = _make_cgroup(root, 2)
    if group is None:
        return False
    try:
        subprocess.run(["/bin/true"], preexec_fn=joiner(group), check=True, timeout=10)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        _remove_cgroup(group)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _make_cgroup(root: Path, processes: int) -> Path | None:
    group = root / f"llmgate-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(processes))
    except OSError:
        _remove_cgroup(group)
        return None
    return group


@contextmanager
def pids_cgroup(processes: int):
    """A pids cgroup capped at `processes` for one run (None where none can be made),
    emptied and removed on leaving."""
    root = pids_cgroups()
    group = None if root is None else _make_cgroup(root, processes)
    try:
        yield group
    finally:
        if group is not None:
            _remove_cgroup(group)


def _remove_cgroup(group: Path, limit_s: float = 5.0) -> None:
    """Kill whatever is left in a run's cgroup, then remove it."""
    deadline = time.monotonic() + limit_s
    while group.exists():
        for pid in _read(group / "cgroup.procs").split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        try:
            group.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def joiner(group: Path):
    """A preexec_fn moving the new process into `group` (plain system calls: it runs in a
    child forked from a threaded parent)."""
    path, text = str(group / "cgroup.procs"), b"0"

    def join():
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
    return join

