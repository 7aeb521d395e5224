import re

import pytest

from harness.cli import main


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "qwen-7b" in out and "--model-path" in out and "smollm2-135m" in out


def test_devices_says_why_hardware_is_unusable(capsys):
    from harness.devices import get_backend

    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in ("cpu", "cuda", "npu"):
        ok, reason = get_backend(name).availability()
        assert name in out and (ok or reason in out)


def test_unknown_arguments_are_refused_outside_run():
    with pytest.raises(SystemExit):
        main(["models", "--bogus"])


def test_run_help_says_where_the_options_are(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Every argument not listed here goes to pytest" in out
    assert "under 'llmgate' in `pytest --help`" in out and "examples:" in out


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_run_refuses_fewer_than_one_worker(workers, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--workers", workers])
    assert "--workers: expected an integer >= 1" in capsys.readouterr().err


def test_run_starts_one_worker_per_model_at_most_one_per_core():
    import os

    from harness.cli import ROOT, _workers_for

    numerics = str(ROOT / "suites" / "numerics")
    assert _workers_for([numerics, "-k", "qwen-tiny and bs1-"]) == (1, None)
    two = _workers_for([numerics, "--model", "qwen-tiny,falcon-tiny", "--dtype", "fp32"])
    assert two == (min(2, os.cpu_count()), None)
    workers, code = _workers_for([numerics, "--batch", "0"])
    assert code == pytest.ExitCode.USAGE_ERROR


def test_prepare_says_what_it_did_per_entry(capsys, tmp_path):
    from tests.conftest import tiny_checkpoint

    smollm2 = tiny_checkpoint("smollm2-135m")
    (tmp_path / smollm2.name).symlink_to(smollm2)
    assert main(["prepare", "--cache-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert re.search(r"smollm2-135m +verified", out) and re.search(r"falcon-tiny +built", out)
    assert "it/s" not in captured.err and "%|" not in captured.err  # no progress bars


def test_run_passes_every_pytest_argument_through_its_pre_collection():
    from harness.cli import ROOT, _workers_for

    numerics = str(ROOT / "suites" / "numerics")
    for extra in (["-v"], ["-q"], ["--tb=short"], ["-rA"], ["-v", "-rA", "--tb=short"]):
        assert _workers_for([numerics, "-k", "qwen-tiny and bs1-", *extra]) == (1, None), extra


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llmgate {command}") and "\n" not in err and "Traceback" not in err
    return err


def test_weights_quant_of_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(["weights", "quant", str(tmp_path / "afile"), str(tmp_path / "o"),
                 "--scheme", "w8a8"])
    assert code == 2 and "afile: not a checkpoint directory" in _one_line_error(capsys,
                                                                                "weights")


def test_weights_quant_into_an_impossible_output_is_a_one_line_error(capsys):
    from tests.conftest import tiny_checkpoint

    code = main(["weights", "quant", str(tiny_checkpoint("falcon-tiny")), "/proc/nope",
                 "--scheme", "w8a8"])
    assert code == 2 and "/proc/nope: cannot create it" in _one_line_error(capsys, "weights")


def test_prepare_into_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["prepare", "--cache-dir", str(tmp_path / "afile")]) == 2
    assert "afile: exists and is not a directory" in _one_line_error(capsys, "prepare")


def test_output_into_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    from harness.cli import ROOT

    child = subprocess.Popen([sys.executable, "-m", "harness.cli", "baseline", "show",
                              "003_qwen-7b_910b3"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={"PYTHONPATH": str(ROOT),
                                                          "PATH": "/usr/bin:/bin"})
    child.stdout.close()  # as `| head` does once it has its lines
    err = child.stderr.read().decode()
    assert child.wait() != 0 or err == ""
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.fixture
def umask_022():
    import os

    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777
            for p in [root, *root.rglob("*")]}


def test_cache_entries_and_weights_output_follow_the_umask(tmp_path, umask_022, capsys):
    """Teammates share the cache and /data: nothing is created 0700 or 0600."""
    from harness.checkpoints import ensure_checkpoint
    from tests.conftest import tiny_checkpoint

    smollm2 = tiny_checkpoint("smollm2-135m")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / smollm2.name).symlink_to(smollm2)
    entry, status = ensure_checkpoint("falcon-tiny", tmp_path / "cache")
    assert status == "built"
    out = tmp_path / "quant"
    assert main(["weights", "quant", str(entry), str(out), "--scheme", "w8a16"]) == 0
    for root in (entry, out):
        modes = _modes(root)
        assert {m for p, m in modes.items() if (root / p).is_dir()} == {0o755}, modes
        assert {m for p, m in modes.items() if (root / p).is_file()} == {0o644}, modes
