"""How a run's time and host memory grow with the model: what to expect at 7B and 15B.

    .venv/bin/python benchmarks/scale.py [--layers 1,3,6] [--out DIR]

Writes random-weight Llama-layout checkpoints at Llama-2-7B's (and Chinese-Alpaca-2-7B's)
real widths (hidden 4096, MLP 11008, 32 heads) with fewer layers (default 1, 3 and 6: about
0.6B, 1.0B and 1.6B parameters with SmolLM2's 49,152-token vocabulary and tokenizer), in
bfloat16 as such checkpoints are published. Each is registered from its directory
(`--model-path NAME=DIR`) and run, in fp32 on the CPU, through:
  - numerics, live: the reference model loaded and run in the run (batch 1, 32-token prompt);
  - numerics, auto: the same, writing the reference outputs into a store;
  - numerics, stored: from that store, the reference model never loaded;
  - perf: batch 1, 32 tokens in and out, two repeats;
  - accuracy: MMLU, 0-shot, the first question of each of the 57 subjects.
From the records: seconds per case (`case_seconds`) and the highest case peak host RSS
(`peak_host_bytes`) per run; then, per run, a least-squares line in the parameter count and
what it predicts for Llama-2-7B's 6.7B parameters and StarCoder's 15.5B. Prints a markdown
table; the figures are in DIR/scale.json. Time grows with the tokens a case runs as well
as with the model: the prediction is for these shapes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.checkpoints import TOKENIZER_FILES, embedded_checkpoint  # noqa: E402
from harness.reference import hf_model  # noqa: E402
from models.config import ModelConfig  # noqa: E402

WIDTHS = dict(hidden_size=4096, intermediate_size=11008, num_heads=32, num_kv_heads=32,
              vocab_size=49152, max_positions=4096, norm_eps=1e-5, tie_embeddings=False,
              rope_theta=10000.0)
PREDICT = {"7B (6.7B parameters)": 6.74e9, "15B (15.5B parameters)": 15.5e9}
SHAPE = ["--dtype", "fp32", "--batch", "1", "--seqlen", "32"]
RUNS = {
    "numerics live": ["suites/numerics", *SHAPE],
    "numerics auto": ["suites/numerics", *SHAPE, "--reference-mode", "auto"],
    "numerics stored": ["suites/numerics", *SHAPE, "--reference-mode", "stored"],
    "perf": ["suites/perf", *SHAPE, "--repeats", "2", "--warmup", "0",
             "--perf-baseline", "none"],
    "accuracy": ["suites/accuracy", "--task", "mmlu", "--dtype", "fp32", "--shots", "0",
                 "--questions-per-subject", "1", "--accuracy-baseline", "none"],
}


def write_checkpoint(layers: int, out: Path) -> int:
    """A bfloat16 Llama checkpoint with `layers` layers at 7B widths; returns its parameter
    count."""
    name = out.name
    if not (out / "config.json").exists():
        cfg = ModelConfig(name, "llama", num_layers=layers, **WIDTHS)
        torch.manual_seed(0)
        model = hf_model(cfg, dtype=torch.bfloat16, initializer_range=0.02)
        model.save_pretrained(out)
        for file in TOKENIZER_FILES:
            shutil.copy(embedded_checkpoint("smollm2-135m") / file, out / file)
        del model
    total = 0
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            total += sum(math.prod(f.get_slice(n).get_shape()) for n in f.keys())
    return total


def run(name: str, path: Path, args: list[str], results: Path, store: Path) -> list[dict]:
    """One pytest run of a suite on the model; its records."""
    run_id = name.replace(" ", "-")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
               *args, f"--model-path={path.name}={path}", f"--results-dir={results}",
               f"--run-id={run_id}", f"--reference-store={store}"]
    if "--reference-mode" not in args:
        command = [c for c in command if not c.startswith("--reference-store")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    records = results / run_id / "records-main.jsonl"
    rows = [json.loads(line) for line in records.read_text().splitlines()] \
        if records.exists() else []
    measured = [r for r in rows if r.get("outcome") in ("passed", "failed")]
    if done.returncode not in (0, 1) or not measured:
        raise SystemExit(f"{name} on {path.name}: pytest exited {done.returncode} with "
                         f"{len(measured)} measured cases\n{done.stdout[-3000:]}")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="1,3,6", help="decoder layers per size")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="which runs (default: all); figures already in DIR/scale.json "
                             "for other runs and sizes are kept")
    parser.add_argument("--out", type=Path, default=None, help="checkpoints and runs")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="llmgate-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    names = args.runs.split(",")
    table = json.loads((out / "scale.json").read_text()) if (out / "scale.json").exists() else []
    for layers in [int(n) for n in args.layers.split(",")]:
        path = out / f"scale-{layers}l"
        params = write_checkpoint(layers, path)
        table = [r for r in table if not (r["model"] == path.name and r["run"] in names)]
        for name in names:
            results = out / "runs" / path.name
            shutil.rmtree(results / name.replace(" ", "-"), ignore_errors=True)
            if name == "numerics auto":  # computes and writes every entry afresh
                shutil.rmtree(out / "store" / path.name, ignore_errors=True)
            rows = run(name, path, RUNS[name], results, out / "store" / path.name)
            seconds = [r["case_seconds"] for r in rows]
            table.append({"model": path.name, "layers": layers, "parameters": params,
                          "run": name, "cases": len(rows),
                          "seconds_per_case": sum(seconds) / len(seconds),
                          "peak_host_gb": max(r["peak_host_bytes"] for r in rows) / 1e9,
                          "cases_failed": sum(not r["passed"] for r in rows)})
            print(json.dumps(table[-1]), flush=True)
    (out / "scale.json").write_text(json.dumps(table, indent=1))
    print(f"\ncores: {os.cpu_count()}; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; figures in {out / 'scale.json'}\n")
    print_table(table)


def print_table(table: list[dict]) -> None:
    sizes = sorted({(r["parameters"], r["model"]) for r in table})
    head = [f"{p / 1e9:.2f}B" for p, _ in sizes]
    print("| run | measure | " + " | ".join(head) + " | per 1B parameters | "
          + " | ".join(PREDICT) + " |")
    print("|---" * (3 + len(head) + len(PREDICT)) + "|")
    for name in RUNS:
        rows = sorted((r for r in table if r["run"] == name), key=lambda r: r["parameters"])
        x = np.array([r["parameters"] for r in rows], dtype=float)
        for key, unit in (("seconds_per_case", "s per case"), ("peak_host_gb", "peak GB")):
            y = np.array([r[key] for r in rows])
            slope, intercept = np.polyfit(x, y, 1)
            predicted = [intercept + slope * p for p in PREDICT.values()]
            print(f"| {name} | {unit} | " + " | ".join(f"{v:.1f}" for v in y)
                  + f" | {slope * 1e9:.2f} | " + " | ".join(f"{v:.0f}" for v in predicted) + " |")


if __name__ == "__main__":
    main()
