"""The perf CSVs in the source documents' format, one per hardware x model x dtype.

`performance_<hardware>_<model>_<dtype>.csv` (the seeds' `performance_test_npu_<model>_xxx.csv`)
has the seeds' columns exactly and first, then ours; `max_batch_<hardware>_<model>_<dtype>.csv`
is the seeds' max-batch table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.perf.timing import SEED_COLUMNS

EXTRA_COLUMNS = ("model", "hardware", "dtype", "e2e_throughput_tokens_per_s",
                 "decode_tokens_per_s", "decode_step_ms_p90", "first_token_ms_p90",
                 "tokenize_ms_median", "peak_memory_bytes", "weight_bytes", "kv_bytes_per_step",
                 "achieved_gb_per_s", "copy_bandwidth_gb_per_s", "pct_of_floor", "device",
                 "compile", "outcome", "reason")
MAX_BATCH_COLUMNS = ("max_batch", "input_seq_len(Encoding)", "output_seq_len(Decoding)",
                     "forward_first_token_time(ms)", "forward_next_token_time(ms)",
                     "e2e_throughput_tokens_per_s", "predicted_batch", "bound_by",
                     "memory_limit_bytes", "model", "hardware", "dtype", "outcome", "reason")


def write_seed_csvs(run_dir: Path, rows: list[dict]) -> list[Path]:
    """Write the per hardware x model x dtype CSVs of the perf rows; returns the files."""
    written = []
    for test, stem, columns in (("test_perf", "performance", SEED_COLUMNS + EXTRA_COLUMNS),
                                ("test_max_batch", "max_batch", MAX_BATCH_COLUMNS)):
        measured = [r for r in rows if r.get("suite") == "perf" and r.get("test") == test
                    and r.get("outcome") != "skipped"]
        groups: dict[tuple, list[dict]] = {}
        for row in measured:
            groups.setdefault((row["hardware"], row["model"], row["dtype"]), []).append(row)
        for (hardware, model, dtype), part in sorted(groups.items()):
            frame = pd.DataFrame([{c: r.get(c) for c in columns} for r in part])
            frame["input_seq_len(Encoding)"] = [r["seqlen"] for r in part]
            frame["output_seq_len(Decoding)"] = [r["out"] for r in part]
            if test == "test_perf":
                frame["batch_size"] = [r["batch"] for r in part]
                frame = frame.sort_values(["batch_size", "input_seq_len(Encoding)",
                                           "output_seq_len(Decoding)"])
            path = Path(run_dir) / f"{stem}_{hardware}_{model}_{dtype}.csv"
            frame.to_csv(path, index=False)
            written.append(path)
    return written
