"""A source document's command line as llmgate reads it: its parts (`SeedCommand`), main.py's
flags as the documents spell them (`main_parser`) and atb_speed_sdk's config.ini beside it,
where the documents leave things to it. `ZooError` is what llmgate cannot run as written.
"""

from __future__ import annotations

import argparse
import configparser
from dataclasses import dataclass, field
from pathlib import Path


class ZooError(ValueError):
    """A seed command line llmgate cannot run as written; the message says why."""


@dataclass
class SeedCommand:
    """A pasted line's parts: its variable assignments, torchrun's process count, the script
    and its arguments, and what follows `--` (pytest's)."""

    env: dict[str, str] = field(default_factory=dict)
    nproc: int | None = None  # torchrun's --nproc_per_node
    script: str = "main.py"
    args: list[str] = field(default_factory=list)
    pytest_args: list[str] = field(default_factory=list)  # after "--"


class SeedParser(argparse.ArgumentParser):
    def error(self, message):
        raise ZooError(f"main.py: {message}")


def main_parser() -> argparse.ArgumentParser:
    """main.py's flags as the documents spell them, and the few of llmgate's own."""
    parser = SeedParser(prog="main.py", add_help=False, allow_abbrev=False)
    add = parser.add_argument
    add("--model_path")
    add("--device", nargs="+", type=int, help="device ids; two or more run tensor parallel")
    add("--mode", choices=("performance", "precision"))
    add("--task", choices=("inference", "precision", "performance"))
    add("--data_dtype", choices=("fp16", "int8"))
    add("--is_quant", type=int, choices=(0, 1))
    add("--hardware", choices=("310", "910"))
    add("--batch", type=int)
    add("--set_case_pair", nargs="?", type=int, const=1, default=None)
    add("--seqlen_in_pair", nargs="+", type=int)
    add("--seqlen_out_pair", nargs="+", type=int)
    add("--seqlen_in_range", nargs=2, type=int)
    add("--seqlen_out_range", nargs=2, type=int)
    add("--performance_output_file")
    add("--dataset_path", "--dataset-path", dest="dataset_path")
    # llmgate's: which registered model the directory is, where to run, print only
    add("--model", dest="llmgate_model")
    add("--backend", choices=("cpu", "cuda", "npu"))
    add("--print-only", action="store_true")
    return parser


def read_config_ini(cwd: Path) -> configparser.ConfigParser:
    """atb_speed_sdk's config.ini in the working directory, if there is one."""
    ini = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    path = cwd / "config.ini"
    if path.is_file():
        try:
            ini.read(path, encoding="utf-8")
        except configparser.Error as e:
            raise ZooError(f"{path}: not a valid config.ini ({e.message.splitlines()[0]})") \
                from None
    return ini


def ini_value(ini, section: str, key: str) -> str | None:
    """`[section] key` of config.ini, stripped; None where absent or blank."""
    value = ini.get(section, key, fallback=None)
    return value.strip() if value and value.strip() else None


def ini_int(ini, section: str, key: str) -> int | None:
    """`[section] key` of config.ini as a whole number; None where absent or blank."""
    value = ini_value(ini, section, key)
    if value is not None and not value.isdigit():
        raise ZooError(f"config.ini: [{section}] {key} {value!r}: expected a whole number")
    return None if value is None else int(value)
