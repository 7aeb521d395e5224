"""Option values -> Python values, or a one-line `pytest.UsageError` naming the option."""

from __future__ import annotations

import re

import pytest

# The largest batch a run may ask for: far beyond any device's memory for these models, yet
# an integer every tensor shape takes (`--batch 99999999999999999999` is a typo, not a case).
MAX_BATCH = 65536


def split_values(values: list[str] | None, option: str | None = None) -> list[str]:
    """Repeatable options also take comma-separated lists: --dtype fp32,bf16. Given the
    option's name, an empty item (`--dtype ''`, `--batch 1,,4`) is a usage error rather than
    a silent fall-back to the default."""
    for value in values or []:
        if option and not all(v.strip() for v in value.split(",")):
            raise pytest.UsageError(f"{option} {value!r}: an empty value; expected "
                                    "comma-separated values")
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def unique(values: list) -> list:
    """`values` in order, each once: `--dtype fp32,fp32` runs its cases once."""
    return list(dict.fromkeys(values))


def check_names(option: str, values: list[str], valid) -> None:
    for value in values:
        if value not in valid:
            raise pytest.UsageError(f"{option} {value!r} is unknown; valid: {', '.join(valid)}")


def positive_int(option: str, item: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An ASCII decimal integer >= minimum ('²' or '٣' are digits to Python, not to us)."""
    if (not re.fullmatch(r"[0-9]+", item.strip()) or int(item) < minimum
            or (maximum is not None and int(item) > maximum)):
        bound = f" and <= {maximum}" if maximum is not None else ""
        raise pytest.UsageError(f"{option} {item!r}: expected an integer >= {minimum}{bound}")
    return int(item)


def int_list(option: str, values: list[str] | None, default: list[int],
             maximum: int | None = None) -> list[int]:
    parsed = [positive_int(option, item, maximum=maximum)
              for item in split_values(values, option)]
    return unique(parsed) or default


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
