"""The stored reference: what the numerics gates need of transformers, computed once and kept
(`--reference-store DIR`, `--reference-mode auto|stored|live`). A stored run gives the live
run's verdicts and figures without loading the reference; a missing, damaged or foreign entry
is refused by name."""

import json

import pytest
import torch

from harness.reference_store import (
    ReferenceStore,
    ReferenceStoreError,
    directory_digest,
)

pytest_plugins = ["pytester"]

KEY = {"kind": "teacher-forced", "model": "m", "dtype": "fp32", "batch": 2, "seqlen": 4,
       "out": 1}


def tensors():
    return {"logits": torch.arange(6.0).reshape(1, 2, 3), "tokens": torch.tensor([[1, 2]])}


def test_an_entry_is_computed_once_written_and_read_back_exactly(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return tensors()
    store = ReferenceStore(tmp_path)
    first = store.get(KEY, compute)
    assert store.get(KEY, compute) is first and len(calls) == 1  # remembered in the run
    again = ReferenceStore(tmp_path, "stored").get(KEY, lambda: pytest.fail("computed"))
    assert torch.equal(again["logits"], first["logits"])
    assert torch.equal(again["tokens"], first["tokens"])
    assert again["logits"].dtype == torch.float32  # kept as computed: stored == live


def test_stored_mode_names_a_missing_entry_and_how_to_fill_it(tmp_path):
    store = ReferenceStore(tmp_path, "stored")
    with pytest.raises(ReferenceStoreError, match=r"--reference-mode stored: no entry .*"
                       r"teacher-forced-\w+\.safetensors for kind teacher-forced, model m, "
                       r"dtype fp32, batch 2, seqlen 4, out 1; fill the store"):
        store.get(KEY, tensors)


def test_a_truncated_entry_is_refused_by_name(tmp_path):
    store = ReferenceStore(tmp_path)
    store.get(KEY, tensors)
    path = store.path(KEY)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ReferenceStoreError, match=f"{path}: not a readable reference entry"):
        ReferenceStore(tmp_path).get(KEY, tensors)


def test_an_entry_for_another_key_is_refused_naming_the_field(tmp_path):
    store = ReferenceStore(tmp_path)
    other = {**KEY, "seqlen": 8}
    store.get(other, tensors)
    store.path(KEY).parent.mkdir(parents=True, exist_ok=True)
    store.path(other).rename(store.path(KEY))  # a foreign file under this key's name
    with pytest.raises(ReferenceStoreError, match="an entry for another key "
                       r"\(seqlen is 8, expected 4\)"):
        ReferenceStore(tmp_path).get(KEY, tensors)


def test_live_mode_neither_reads_nor_writes_the_store(tmp_path):
    ReferenceStore(tmp_path, "live").get(KEY, tensors)
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_digest_follows_its_content(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"a" * 100)
    (ckpt / "README.md").write_text("not content")
    cache = tmp_path / "digests.json"
    before = directory_digest(ckpt, cache)
    assert json.loads(cache.read_text())  # each file hashed once, remembered
    (ckpt / "README.md").write_text("edited")
    assert directory_digest(ckpt, cache) == before
    (ckpt / "model.safetensors").write_bytes(b"b" * 100)
    assert directory_digest(ckpt, cache) != before


def records(pytester, run_id):
    path = pytester.path / "reports" / run_id / "records-main.jsonl"
    return {(r["case"], r["test"]): r for r in map(json.loads, path.read_text().splitlines())}


FIGURES = ("outcome", "max_abs_diff", "top1_agreement", "mean_kl", "max_kl", "min_cosine",
           "padded_error_ratio", "reference_max_abs_diff", "fake_quant_mean_kl",
           "first_differing_token", "tokens_equal")


# The tiny models' default grid (all four dtypes, both batches); smollm2-135m at batch 1 in
# fp32 (its greedy entry too) and w8a8 (a fake-quant reference entry): the other dtypes and
# batches take the same paths and add minutes.
@pytest.mark.parametrize("models, narrower", [
    (("qwen-tiny", "falcon-tiny"), ()),
    (("smollm2-135m",), ("--batch", "1", "--dtype", "fp32,w8a8")),
])
def test_a_stored_run_gives_the_live_verdicts_and_figures_without_the_reference(
        suites, tmp_path, models, narrower):
    store = tmp_path / "store"
    args = ("copied_suites/numerics", "--model", ",".join(models), "--seqlen", "16",
            "--decode-steps", "4", *narrower)
    live = suites.runpytest(*args, "--run-id", "live")
    # (one token: pytest would take a separate path argument into its rootdir search)
    filled = suites.runpytest(*args, f"--reference-store={store}", "--run-id", "auto")
    stored = suites.runpytest(*args, f"--reference-store={store}", "--reference-mode",
                              "stored", "--run-id", "stored")
    for result in (live, filled, stored):
        assert result.ret == 0, result.stdout.str()[-3000:]
        result.stdout.fnmatch_lines(["*llmgate passed*"])
    expected = records(suites, "live")
    # per model: dtypes x (teacher-forced at each batch + padding at batch 4) + greedy
    assert len(expected) == (13 if not narrower else 3) * len(models)
    for run_id in ("auto", "stored"):
        found = records(suites, run_id)
        assert found.keys() == expected.keys()
        for key, row in expected.items():
            assert {f: row.get(f) for f in FIGURES} == {f: found[key].get(f) for f in FIGURES}
    # stored mode refuses to load a reference model, so each pass above came from the store
    entries = ["greedy"] + ["teacher"] * (8 if not narrower else 2)  # shapes x dtypes
    assert sorted(p.name.split("-")[0] for p in (store / models[0]).iterdir()) == entries


def test_stored_mode_with_an_empty_store_fails_each_case_naming_its_entry(suites, tmp_path):
    (tmp_path / "empty").mkdir()
    result = suites.runpytest("copied_suites/numerics", "--model", "qwen-tiny", "--seqlen",
                              "16", "--dtype", "fp32", "--batch", "1", "-k", "teacher",
                              f"--reference-store={tmp_path / 'empty'}",
                              "--reference-mode", "stored", "--run-id", "empty")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    (row,) = records(suites, "empty").values()
    assert row["outcome"] == "error"
    assert "--reference-mode stored: no entry" in row["reason"]
    assert "kind teacher-forced, model qwen-tiny, dtype fp32, batch 1, seqlen 16" in \
        row["reason"]


def test_stored_mode_needs_an_existing_store(suites, tmp_path):
    result = suites.runpytest("copied_suites/numerics", "--reference-mode", "stored")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--reference-mode stored: give the store with "
                                 "--reference-store DIR*"])
    result = suites.runpytest("copied_suites/numerics", "--reference-mode", "stored",
                              f"--reference-store={tmp_path / 'nope'}")
    result.stderr.fnmatch_lines(["*--reference-store */nope: directory not found*"])
