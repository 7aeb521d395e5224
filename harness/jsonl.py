"""JSON-lines files that survive a kill: records, accuracy answers, HumanEval samples.

A writer appends whole lines and fsyncs, so a killed run can lose at most the line it was
writing; the reader skips that cut line and the next append starts on a fresh one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def read(path: Path) -> list[dict]:
    """Every row of `path`, skipping a line cut short by an interrupted write.

    Lines end at "\n" only: `str.splitlines` would also cut at characters JSON keeps raw in a
    string (NEL U+0085, U+2028, form feed...; one MMLU question holds a NEL) and lose that
    row."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append(path: Path, rows: Iterable[dict]) -> None:
    """Append `rows` as lines (values JSON cannot hold as strings), flushed to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:  # "a": every write lands at the end, whatever was read
        if f.seek(0, os.SEEK_END):
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a kill mid-line left a partial line: start a fresh one
                f.write(b"\n")
        f.writelines(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n"
                     for row in rows)
        f.flush()
        os.fsync(f.fileno())
