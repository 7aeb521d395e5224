"""llmgate's pytest options (one group, the defaults in the help) and markers: the module pytest
loads as the `llmgate` plugin. An installed llmgate registers it through its `pytest11` entry
point; in the repository the root conftest.py registers it when that has not. It brings in the
rest of the plugin, `harness.plugin`.
"""

from harness.ports.options import add_options as add_port_options
from harness.suites import SUITES

pytest_plugins = ["harness.plugin"]


def pytest_configure(config):
    for suite in SUITES:  # here, not in pyproject.toml: an installed llmgate has none
        config.addinivalue_line("markers", f"{suite.name}: {suite.marker}")


def pytest_addoption(parser):
    group = parser.getgroup("llmgate", "llmgate: model x hardware x dtype x batch x seqlen")
    add_selection_options(group)
    add_run_options(group)
    add_port_options(group)
    for suite in SUITES:
        suite.add_options(group)


def add_selection_options(group) -> None:
    """What a run selects: models and their weights, hardware, dtypes, batches, lengths."""
    group.addoption("--model", action="append", metavar="NAME",
                    help="registered model name, repeatable or comma-separated "
                         "(default: every tiny model and smollm2-135m; perf adds the real "
                         "models, skipped without --model-path)")
    group.addoption("--model-path", action="append", metavar="NAME=DIR",
                    help="HuggingFace checkpoint directory with the real weights of NAME "
                         "(repeatable; without --model, these models are the selection; "
                         "default: none, so real 7B models are skipped)")
    group.addoption("--hardware", action="append", metavar="HW",
                    help="cpu, cuda or npu, repeatable or comma-separated (default: cpu)")
    group.addoption("--dtype", action="append", metavar="DTYPE",
                    help="fp32, bf16, fp16, or the int8 schemes w8a16 (int8 weights, 16-bit "
                         "activations: bf16 on cpu, fp16 elsewhere) and w8a8 (int8 weights "
                         "and per-token int8 activations), repeatable or comma-separated "
                         "(default: numerics fp32,bf16,w8a16,w8a8; perf and accuracy fp32)")
    group.addoption("--batch", action="append", metavar="N",
                    help="batch sizes, repeatable or comma-separated (default: numerics 1,4; "
                         "perf 1,8)")
    group.addoption("--seqlen", action="append", metavar="N",
                    help="prompt lengths, repeatable or comma-separated (default: 32,128)")
    group.addoption("--decode-steps", type=int, default=8, metavar="N",
                    help="teacher-forced decode steps per numerics case, >= 1 (default: 8)")


def add_run_options(group) -> None:
    """How a run goes: hardware gating, directories, ids, shards, resume, tensor parallelism,
    the stored reference and localization."""
    group.addoption("--require-hardware", action="store_true", default=False,
                    help="fail instead of skip when requested hardware or dtype is "
                         "unavailable (default: skip with the reason)")
    group.addoption("--cache-dir", metavar="DIR",
                    help="where embedded checkpoints are built (default: $LLMGATE_CACHE, "
                         "else ~/.cache/llmgate)")
    group.addoption("--results-dir", metavar="DIR",
                    help="results root; each run writes DIR/<run-id>/ "
                         "(default: reports/ under pytest's rootdir)")
    group.addoption("--run-id", metavar="ID",
                    help="name of this run's results directory; an existing one is refused "
                         "unless --resume is given (default: a timestamp)")
    group.addoption("--shard", metavar="K/N",
                    help="run the K-th of N deterministic parts of the selection (each model's "
                         "cases stay together); join the runs with `llmgate merge`")
    group.addoption("--baselines-dir", metavar="DIR",
                    help="stored baselines (default: the project's baselines/)")
    group.addoption("--resume", action="store_true", default=False,
                    help="with --run-id of an interrupted run: do not rerun what it recorded "
                         "(recorded passes skip, recorded failures fail) (default: off)")
    group.addoption("--tp", default="1", metavar="N",
                    help="tensor-parallel ranks: the pytest process is rank 0 and starts "
                         "ranks 1..N-1 itself (gloo on cpu); cases gain -tpN (default: 1)")
    group.addoption("--quantize-lm-head", action="store_true", default=False,
                    help="w8a16/w8a8 quantize the LM head too (default: every linear layer "
                         "but the LM head; embeddings never)")
    group.addoption("--reference-store", metavar="DIR",
                    help="keep what the numerics gates need of the transformers reference "
                         "(its tokens, logits and greedy tokens) in DIR, keyed by checkpoint "
                         "content, prompt, shape and versions (default: none)")
    group.addoption("--reference-mode", default=None, choices=("auto", "stored", "live"),
                    help="auto: use a matching stored entry, else compute and store it; "
                         "stored: never load the reference, a missing entry is an error; "
                         "live: compute, ignore the store (default: auto with "
                         "--reference-store, else live)")
    group.addoption("--localize", action="store_true", default=False,
                    help="re-run every teacher-forced case with hooks on each decoder layer "
                         "and name the first block beyond its tolerance (default: failing "
                         "cases only)")
