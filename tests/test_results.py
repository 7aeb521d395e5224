import json

from harness import jsonl
from harness.results import ResultsStore, latest_rows, load_records, merge, summary_table


def row(case, suite="numerics", outcome="passed", session=1, **metrics):
    return {"suite": suite, "case": case, "test": "t", "outcome": outcome,
            "passed": outcome == "passed", "session": session, **metrics}


def test_records_are_appended_and_merged_per_suite(tmp_path):
    a, b = ResultsStore(tmp_path, "gw0"), ResultsStore(tmp_path, "gw1")
    a.record(row("m-cpu-fp32-bs1-in8", max_abs_diff=1e-6))
    b.record(row("m-cpu-fp32-bs2-in8", outcome="failed", max_abs_diff=float("nan")))
    b.record(row("m-cpu-fp32-bs1-in8", suite="perf", ms=1.5))
    written = merge(tmp_path)
    assert set(written) == {"numerics", "perf"}
    numerics = written["numerics"].read_text().splitlines()
    assert numerics[0].startswith("suite,case,test,outcome,passed")
    assert len(numerics) == 3
    assert "ms" not in numerics[0]  # perf-only columns stay in perf.csv
    assert "max_abs_diff" in numerics[0] and ",nan," in numerics[2]  # NaN keeps its column


def test_an_interrupted_write_loses_only_the_cut_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.record(row("c1"))
    store.record(row("c2"))
    with open(store.path, "a") as f:
        f.write('{"suite": "numerics", "case": "c3", "te')  # killed mid-write
    rows = load_records(tmp_path)
    assert [r["case"] for r in rows] == ["c1", "c2"]
    ResultsStore(tmp_path).record(row("c4"))  # a rerun appends
    assert [r["case"] for r in load_records(tmp_path)] == ["c1", "c2", "c4"]


def test_an_append_after_a_cut_line_starts_a_fresh_one(tmp_path):
    path = tmp_path / "accuracy" / "answers.jsonl"
    jsonl.append(path, [{"id": "q1", "question": "下列"}])
    with open(path, "a") as f:
        f.write('{"id": "q2", "ques')  # killed mid-write
    jsonl.append(path, [{"id": "q3"}, {"id": "q4"}])
    assert [r["id"] for r in jsonl.read(path)] == ["q1", "q3", "q4"]
    assert jsonl.read(path)[0]["question"] == "下列"


def test_a_resumed_session_replaces_the_rows_it_reran(tmp_path):
    ResultsStore(tmp_path, "gw1").record(row("c1", outcome="skipped", session=1))
    ResultsStore(tmp_path, "gw0").record(row("c1", outcome="passed", session=2))
    assert [r["outcome"] for r in latest_rows(load_records(tmp_path))] == ["passed"]


def test_summary_table_lists_failures_first_with_units(tmp_path):
    store = ResultsStore(tmp_path)
    store.record(row("a-case", max_abs_diff=1e-6, min_cosine=0.99999871, rule="<= 1e-4"))
    store.record(row("b-case", outcome="failed", max_abs_diff=2.0, reason="too far"))
    store.record(row("c-case", outcome="skipped", reason="no npu"))
    lines = summary_table(tmp_path).splitlines()
    assert lines[0] == "numerics: 1 passed, 1 failed, 0 error, 1 skipped"
    assert "b-case" in lines[3] and "failed" in lines[3] and "too far" in lines[3]
    assert "c-case" in lines[4] and "no npu" in lines[4]
    assert "0.999999" in lines[5] and "<= 1e-4" in lines[5]  # cosine shows its digits
    assert json.loads(store.path.read_text().splitlines()[0])["case"] == "a-case"
