"""A run's tuning provenance: the documents' variables, the CPU governor, Ascend versions."""

import json

from harness import provenance
from harness.results import environment


def test_the_documents_tuning_variables_are_recorded_and_nothing_else():
    environ = {"ATB_OPERATION_EXECUTE_ASYNC": "1", "HCCL_BUFFSIZE": "110",
               "TASK_QUEUE_ENABLE": "1", "INF_NAN_MODE_ENABLE": "0", "MAX_SEQ_LEN": "2048",
               "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "x"}
    assert provenance.tuning_environment(environ) == {
        "ATB_OPERATION_EXECUTE_ASYNC": "1", "HCCL_BUFFSIZE": "110", "INF_NAN_MODE_ENABLE": "0",
        "MAX_SEQ_LEN": "2048", "TASK_QUEUE_ENABLE": "1"}


def test_versions_are_read_from_the_toolkits_and_drivers_own_files(tmp_path):
    info = tmp_path / "ascend-toolkit" / "latest" / "aarch64-linux"
    info.mkdir(parents=True)
    (info / "ascend_toolkit_install.info").write_text(
        "package_name=Ascend-cann-toolkit\nversion=7.0.RC1\ninnerversion=V100R001C13\n")
    (tmp_path / "driver").mkdir()
    (tmp_path / "driver" / "version.info").write_text("Version=23.0.rc3\nascendhal_version=7.35\n")
    assert provenance.ascend_versions(tmp_path, npu_smi=None) == {"cann": "7.0.RC1",
                                                                  "driver": "23.0.rc3"}
    assert provenance.ascend_versions(tmp_path / "nothing", npu_smi=None) == {}


def test_npu_smis_version_is_read_where_it_runs(tmp_path, monkeypatch):
    smi = tmp_path / "npu-smi"
    smi.write_text("#!/bin/sh\necho '| npu-smi 23.0.rc3                 Version: 23.0.rc3  |'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert provenance.ascend_versions(tmp_path, "npu-smi") == {"npu_smi_driver": "23.0.rc3"}


def test_the_governor_is_read_where_the_kernel_has_one(tmp_path):
    (tmp_path / "g").write_text("performance\n")
    assert provenance.cpu_governor(tmp_path / "g") == "performance"
    assert provenance.cpu_governor(tmp_path / "missing") is None


def test_every_run_records_them_and_the_report_shows_them(monkeypatch, tmp_path):
    monkeypatch.setenv("HCCL_BUFFSIZE", "110")
    env = environment()
    assert env["tuning_env"]["HCCL_BUFFSIZE"] == "110"
    json.dumps(env)  # run.json holds it as is

    from harness.report.render import publish
    from harness.results import ResultsStore, load_records

    ResultsStore(tmp_path).record({"suite": "numerics", "case": "c", "test": "t",
                                   "outcome": "passed", "passed": True, "reason": ""})
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r", **env}))
    publish(tmp_path, load_records(tmp_path))
    assert "<code>HCCL_BUFFSIZE=110</code>" in (tmp_path / "index.html").read_text()


def test_cpu_figures_name_the_vector_extensions_they_ran_with():
    import torch

    from harness.devices import cpu_description, describe_cpu

    info = cpu_description()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["cores"] >= 1 and info["threads"] >= 1 and info["cpu_model"]
    assert info["cpu_capability"] in describe_cpu(info)
    assert environment()["cpu_capability"] == info["cpu_capability"]
