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
