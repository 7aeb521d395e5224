"""Option values -> Python values, or a one-line `pytest.UsageError` naming the option."""

from __future__ import annotations

import re

import pytest


def split_values(values: list[str] | None) -> list[str]:
    """Repeatable options also take comma-separated lists: --dtype fp32,bf16."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def check_names(option: str, values: list[str], valid) -> None:
    for value in values:
        if value not in valid:
            raise pytest.UsageError(f"{option} {value!r} is unknown; valid: {', '.join(valid)}")


def positive_int(option: str, item: str, minimum: int = 1) -> int:
    """An ASCII decimal integer >= minimum ('²' or '٣' are digits to Python, not to us)."""
    if not re.fullmatch(r"[0-9]+", item.strip()) or int(item) < minimum:
        raise pytest.UsageError(f"{option} {item!r}: expected an integer >= {minimum}")
    return int(item)


def int_list(option: str, values: list[str] | None, default: list[int]) -> list[int]:
    parsed = [positive_int(option, item) for item in split_values(values)]
    return list(dict.fromkeys(parsed)) or default


def checked_run_id(value: str) -> str:
    """A run's directory name: one path component under the results root, never `latest`
    (the link to the newest run) and never a separator, `..` or a hidden name."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise pytest.UsageError(f"--run-id {value!r}: expected a name of letters, digits, '.', "
                                "'_' and '-', not starting with '.'")
    if value == "latest":
        raise pytest.UsageError("--run-id 'latest': reserved for the link to the newest run; "
                                "choose another --run-id")
    return value
