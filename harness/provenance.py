"""What an Ascend (or any) run was tuned with, read where the machine keeps it.

The source documents set environment variables before they measure (`ATB_*`, `HCCL_BUFFSIZE`,
`TASK_QUEUE_ENABLE`, `INF_NAN_MODE_ENABLE`, ...), pin the CPU governor to `performance`, and
name the CANN toolkit and NPU driver versions they ran. A figure measured without them is not
the same figure, so every run records which were set, the governor, and the versions the
toolkit's and driver's own files (or `npu-smi`) report where they exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

# Prefixes and names of the tuning variables the documents (and the runtimes they use) read.
TUNING_PREFIXES = ("ATB_", "HCCL_", "ASCEND_", "ACL_", "TASK_QUEUE_ENABLE", "INF_NAN_MODE_",
                   "PYTORCH_NPU_", "NPU_", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF",
                   "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MAX_SEQ_LEN", "TIMEIT",
                   "RETURN_PERF_DETAIL", "LD_PRELOAD")
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def tuning_environment(environ=os.environ) -> dict[str, str]:
    """The tuning variables set in this process, by name."""
    return {k: v for k, v in sorted(environ.items()) if k.startswith(TUNING_PREFIXES)}


def cpu_governor(path: Path = GOVERNOR) -> str | None:
    """cpufreq's governor of CPU 0 (the documents set `performance`), where the kernel has it."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _key_values(path: Path) -> dict[str, str]:
    """`key=value` (or `key: value`) lines, as Ascend's version files write them."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"\s*([A-Za-z_][\w.]*)\s*[=:]\s*(.+?)\s*$", line)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


def ascend_versions(root: Path | None = None, npu_smi: str | None = "npu-smi") -> dict:
    """CANN toolkit, NPU driver and ATB versions from their install files under the Ascend
    root (two levels above ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH, which name
    .../ascend-toolkit/latest; else /usr/local/Ascend), and npu-smi's where it runs."""
    if root is None:
        home = os.environ.get("ASCEND_TOOLKIT_HOME") or os.environ.get("ASCEND_HOME_PATH")
        root = Path(home).resolve().parent.parent if home else Path("/usr/local/Ascend")
    found = {}
    toolkit = sorted(Path(root).glob("ascend-toolkit/latest/*/ascend_toolkit_install.info"))
    for path in toolkit[:1]:
        if version := _key_values(path).get("version"):
            found["cann"] = version
    for name, key in (("driver/version.info", "driver"), ("atb/latest/version.info", "atb")):
        path = Path(root) / name
        if path.is_file() and (version := _key_values(path).get("version")):
            found[key] = version
    if npu_smi and shutil.which(npu_smi):
        try:
            out = subprocess.run([npu_smi, "info"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        if match := re.search(r"Version:\s*(\S+)", out):
            found["npu_smi_driver"] = match.group(1)
    return found


def provenance() -> dict:
    """The run's tuning: variables set, CPU governor, Ascend versions (only what exists)."""
    info: dict = {"tuning_env": tuning_environment()}
    if (governor := cpu_governor()) is not None:
        info["cpu_governor"] = governor
    if versions := ascend_versions():
        info["ascend"] = versions
    return info
