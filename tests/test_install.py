"""An installed llmgate works outside the repository: its plugin, thresholds and baselines come
from the installed package, not from this checkout."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import CACHE, ROOT

SOURCES = ("pyproject.toml", "README.md", "harness", "models", "suites", "baselines")
WHERE = """
import json, harness, harness.options
from harness.baselines import BASELINES_DIR, accuracy_tables, perf_tables
from harness.numerics.teacher_forced import THRESHOLDS_FILE, load_thresholds
print(json.dumps({"harness": harness.__file__, "plugin": harness.options.__file__,
                  "baselines": str(BASELINES_DIR), "thresholds": str(THRESHOLDS_FILE),
                  "version": load_thresholds()["version"], "perf": len(perf_tables()),
                  "accuracy": len(accuracy_tables())}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install .` of a copy of the sources (the build writes beside them), offline and
    without dependencies: torch and the rest are the venv's."""
    tmp = tmp_path_factory.mktemp("install")
    (tmp / "src").mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tmp / "src" / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, tmp / "src" / name)
    built = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                            "--no-build-isolation", "--no-index", "--target", tmp / "site",
                            tmp / "src"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")}
    env |= {"PYTHONPATH": str(tmp / "site"), "LLMGATE_CACHE": str(CACHE)}
    (tmp / "elsewhere").mkdir()
    return tmp, env


def run(args, cwd, env):
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_thresholds_and_baselines_come_from_the_installed_package(installed):
    tmp, env = installed
    found = json.loads(run(["-c", WHERE], tmp / "elsewhere", env))
    site = tmp / "site"
    for key in ("harness", "plugin", "baselines", "thresholds"):
        assert os.path.realpath(found[key]).startswith(str(site.resolve())), (key, found)
    assert found["version"] >= 1 and found["perf"] > 0 and found["accuracy"] > 0


def test_the_suites_run_from_the_installed_package(installed):
    tmp, env = installed
    out = run(["-m", "pytest", "--pyargs", "suites.numerics", "--collect-only", "-q",
               "--model", "qwen-tiny"], tmp / "elsewhere", env)
    assert "test_numerics.py::test_teacher_forced[qwen-tiny-cpu-fp32-" in out
    assert "tests collected" in out


def test_options_are_declared_once_with_the_entry_point_and_the_repository(installed):
    """In the repository an installed llmgate's entry point and the root conftest.py meet;
    the plugin is registered once either way, and `-p no:llmgate` leaves the conftest's."""
    tmp, env = installed
    env = dict(env, PYTHONPATH=f"{tmp / 'site'}{os.pathsep}{ROOT}")
    for blocked in ([], ["-p", "no:llmgate"]):  # conftest.py: not the testpaths' conftests
        help_text = run(["-m", "pytest", *blocked, "--help", "conftest.py"], ROOT, env)
        assert help_text.count("--model=NAME") == 1
        assert help_text.count("llmgate: model x hardware") == 1
