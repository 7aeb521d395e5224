"""One sandboxed run of a program: bwrap's mounts and namespaces, rlimits, the wall-clock
timeout, the marker that says the program ran to its end, and the wait until no process of
the sandbox is left (see the package's docstring)."""

from __future__ import annotations

import json
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.sandbox.cgroups import joiner, pids_cgroup

BWRAP = "bwrap"
PROGRAM = "program.py"
INTERPRETER = os.path.realpath(sys.executable)  # the base interpreter, not the venv's link
EXITED_EARLY = "exited with status 0 before its last statement returned"

# Runs program.py as __main__, then writes the marker it read from stdin before the program
# started. The marker is never in the program's text, argv or environment, and lives only in
# this frame; a program that digs it out of the interpreter (sys._getframe, gc) on purpose
# could fake a pass: out of scope, since what is scored is model-written code, and what this
# defeats is its exiting early.
WRAPPER = f"""\
import os, sys, types
def run(marker):
    main = types.ModuleType('__main__')
    main.__file__ = sys.argv[0] = {PROGRAM!r}
    sys.modules['__main__'] = main
    with open({PROGRAM!r}, 'rb') as f:
        code = compile(f.read(), {PROGRAM!r}, 'exec')
    exec(code, main.__dict__)
    sys.stdout.flush()
    os.write(1, b'\\n' + marker + b'\\n')
run(sys.stdin.buffer.readline().strip())
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0
    memory_bytes: int = 1 << 30  # address space
    file_bytes: int = 16 << 20
    open_files: int = 64
    output_bytes: int = 64 << 10  # of stderr kept for the failure detail
    processes: int = 64  # in the run's pids cgroup, where there is one


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed", "failed" or "timed_out"
    detail: str  # the exception line, the signal, or the timeout
    isolation: str  # "bwrap" or "unsandboxed"
    duration_s: float


class SandboxUnavailable(RuntimeError):
    """bwrap cannot run here and unsandboxed execution was not allowed."""


@cache
def bwrap_status() -> tuple[bool, str]:
    """(usable, reason when not): bwrap must be installed and able to make its namespaces."""
    if shutil.which(BWRAP) is None:
        return False, "bwrap not found (Debian package bubblewrap)"
    try:
        probe = subprocess.run([BWRAP, *_mounts(), "--", "/bin/true"], capture_output=True,
                               text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"bwrap does not start: {e}"
    if probe.returncode != 0:
        tail = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        return False, f"bwrap cannot create its namespaces: {tail[0]}"
    return True, ""


def _mounts() -> list[str]:
    """bwrap arguments up to the working directory (no program yet)."""
    prefix = Path(INTERPRETER).resolve().parents[1]  # e.g. /usr or ~/.pyenv/versions/3.11.7
    hidden = [str(p) for p in {Path.home(), Path(__file__).resolve().parents[2]}
              if p.is_dir() and p != Path("/")]
    args = ["--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in hidden:
        args += ["--tmpfs", path]
    if any(prefix.is_relative_to(h) for h in hidden):
        args += ["--ro-bind", str(prefix), str(prefix)]  # shown again: the interpreter
    return args


def _set_limits(limits: Limits, cgroup: Path | None = None):
    join = joiner(cgroup) if cgroup is not None else None

    def apply():
        if join is not None:  # before anything else runs: every child is counted
            join()
        cpu = int(limits.timeout_s) + 1
        for name, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS,
                                                         limits.memory_bytes),
                            (resource.RLIMIT_FSIZE, limits.file_bytes),
                            (resource.RLIMIT_NOFILE, limits.open_files),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(name, (value, value))
    return apply


def _detail(stderr: str, returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and (":" in line or line.endswith(
                ("Error", "Exception", "Interrupt"))):
            return line[:300]
    return lines[-1][:300] if lines else f"exit status {returncode}"


class Sandbox:
    def __init__(self, limits: Limits = Limits(), allow_unsandboxed: bool = False):
        self.limits = limits
        usable, reason = bwrap_status()
        if not usable and not allow_unsandboxed:
            raise SandboxUnavailable(f"cannot sandbox generated code: {reason}; pass "
                                     "--allow-unsandboxed to run it with rlimits only")
        self.isolation = "bwrap" if usable else "unsandboxed"

    def run(self, program: str) -> Outcome:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="llmgate-sandbox-") as work:
            work = Path(work)
            (work / PROGRAM).write_text(program, encoding="utf-8")
            marker = secrets.token_hex(16)
            info_read, info_write = os.pipe()  # bwrap reports its child's pid here
            command = [INTERPRETER, "-I", "-c", WRAPPER]
            if self.isolation == "bwrap":
                command = [BWRAP, *_mounts(), "--bind", str(work), "/tmp/work",
                           "--chdir", "/tmp/work", "--setenv", "HOME", "/tmp/work",
                           "--info-fd", str(info_write), "--", *command]
            status, returncode = self._execute(command, work, info_read, info_write, marker)
            stderr = _tail(work / "stderr", self.limits.output_bytes)
            finished = marker in _tail(work / "stdout", self.limits.output_bytes)
        duration = time.perf_counter() - start
        if status == "timed_out":
            return Outcome(status, f"timed out after {self.limits.timeout_s:g} s",
                           self.isolation, duration)
        if returncode == 0 and finished:
            return Outcome("passed", "", self.isolation, duration)
        detail = EXITED_EARLY if returncode == 0 else _detail(stderr, returncode)
        return Outcome("failed", detail, self.isolation, duration)

    def _execute(self, command: list[str], work: Path, info_read: int, info_write: int,
                 marker: str) -> tuple[str, int]:
        stdin_read, stdin_write = os.pipe()
        os.write(stdin_write, f"{marker}\n".encode())  # fits the pipe's buffer: never blocks
        os.close(stdin_write)
        with pids_cgroup(self.limits.processes) as cgroup:
            with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
                process = subprocess.Popen(
                    command, cwd=work, stdin=stdin_read, stdout=out, stderr=err,
                    start_new_session=True, preexec_fn=_set_limits(self.limits, cgroup),
                    pass_fds=(info_write,), env={"PATH": "/usr/bin:/bin", "HOME": str(work)})
            os.close(stdin_read)
            os.close(info_write)
            namespace = _namespace(info_read) if self.isolation == "bwrap" else None
            os.close(info_read)
            try:
                return "done", process.wait(timeout=self.limits.timeout_s)
            except subprocess.TimeoutExpired:
                return "timed_out", -signal.SIGKILL
            finally:
                _kill_group(process)
                if namespace:
                    _wait_for_namespace(namespace)

    def run_many(self, programs: list[str], workers: int | None = None,
                 progress=None) -> list[Outcome]:
        """Run programs in parallel (one per core by default); outcomes in input order."""
        def one(program: str) -> Outcome:
            outcome = self.run(program)
            if progress:
                progress(1)
            return outcome

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            return list(pool.map(one, programs))


def _namespace(info_fd: int, limit_s: float = 10.0) -> str | None:
    """The sandbox's pid namespace, from the child pid bwrap reports on its info fd."""
    data, deadline = b"", time.monotonic() + limit_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([info_fd], [], [], 0.1)
        chunk = os.read(info_fd, 4096) if ready else b""
        if ready and not chunk:
            break  # bwrap closed it (or ended) without a complete report
        data += chunk
        try:
            child = json.loads(data)["child-pid"]
        except (ValueError, KeyError):
            continue
        try:
            return os.readlink(f"/proc/{child}/ns/pid")
        except OSError:
            return None  # the program already ended, and its namespace with it
    return None


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _wait_for_namespace(namespace: str, limit_s: float = 30.0) -> None:
    """Until no process of the pid namespace is left (the kernel kills them all once its
    first process is gone; thousands of fork-bomb children take a moment)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not any(_in_namespace(pid, namespace) for pid in os.listdir("/proc")
                   if pid.isdigit()):
            return
        time.sleep(0.05)


def _in_namespace(pid: str, namespace: str) -> bool:
    """A live process of the namespace (a zombie runs nothing; its reaper collects it)."""
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
            return False
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
