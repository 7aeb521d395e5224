import json

from harness.results import ResultsStore, load_records, merge, summary_table


def test_records_are_appended_and_merged_per_suite(tmp_path):
    a, b = ResultsStore(tmp_path, "gw0"), ResultsStore(tmp_path, "gw1")
    a.record("numerics", "m-cpu-fp32-bs1-in8", "test_x", True, max_abs_diff=1e-6)
    b.record("numerics", "m-cpu-fp32-bs2-in8", "test_x", False, max_abs_diff=3.0,
             failures="too far")
    b.record("perf", "m-cpu-fp32-bs1-in8", "test_y", True, ms=1.5)
    written = merge(tmp_path)
    assert set(written) == {"numerics", "perf"}
    numerics = written["numerics"].read_text().splitlines()
    assert numerics[0].startswith("suite,case,test,passed,time")
    assert len(numerics) == 3
    assert "ms" not in numerics[0]  # perf-only columns stay in perf.csv


def test_an_interrupted_write_loses_only_the_cut_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("numerics", "c1", "t", True)
    store.record("numerics", "c2", "t", True)
    with open(store.path, "a") as f:
        f.write('{"suite": "numerics", "case": "c3", "te')  # killed mid-write
    rows = load_records(tmp_path)
    assert [r["case"] for r in rows] == ["c1", "c2"]
    ResultsStore(tmp_path).record("numerics", "c4", "t", True)  # a rerun appends
    assert [r["case"] for r in load_records(tmp_path)] == ["c1", "c2", "c4"]


def test_summary_table_lists_failures_first(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("numerics", "a-case", "t", True, max_abs_diff=1e-6)
    store.record("numerics", "b-case", "t", False, max_abs_diff=2.0)
    lines = summary_table(tmp_path).splitlines()
    assert "b-case" in lines[2] and "False" in lines[2]
    assert json.loads(store.path.read_text().splitlines()[0])["case"] == "a-case"
