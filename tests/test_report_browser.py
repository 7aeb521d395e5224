"""The HTML report, rendered from a fixed run and opened in headless Chromium."""

import shutil

import pytest

from harness.report.render import render
from harness.results import latest_rows, load_records, tally
from tests.example_run import PERF_CASES, write_run
from tests.report_cases import FAILING_CASE, FAILURES, add_comparisons, add_load, fail_perf_case

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian package chromium; `make test` "
                    "installs it where it runs as root)")
    run = write_run(tmp_path_factory.mktemp("reports") / "example",
                    models=("qwen-tiny", "falcon-tiny"))
    fail_perf_case(run)
    add_comparisons(run)
    add_load(run)
    html = render(run)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(html.as_uri())
        page.screenshot(path=str(run / "screenshot.png"), full_page=True)
        yield page, run
        browser.close()


def test_the_summary_counts_every_outcome(page):
    page, run = page
    rows = latest_rows(load_records(run))
    counts = {o: sum(tally(r) == o for r in rows)  # passes apart from the measured only
              for o in ("passed", "measured only", "failed", "error", "skipped")}
    assert sum(counts.values()) == len(rows) and counts["measured only"] > 0
    for outcome, expected in counts.items():
        assert page.locator(f"#count-{outcome.replace(' ', '-')}").inner_text() == str(expected)
    assert page.locator("#verdict").inner_text() == "GATES FAILED"
    failures = page.locator("#failures tr")
    assert failures.count() == 1 + 3  # header + one bf16 failure per model + the perf case
    assert "non-finite logits" in failures.nth(2).inner_text()
    page.locator("#skips summary").click()
    assert "no weights" in page.locator("#skips").inner_text()
    assert "0123456789abcdef" in page.locator("#metadata").inner_text()


def test_every_section_has_its_rows(page):
    page, _ = page
    numerics = page.locator("table.numerics-table")  # one fold per model
    assert numerics.count() == 2
    assert sum(numerics.nth(i).locator("tr").count() - 1 for i in range(2)) == 4
    perf_tables = page.locator("table.perf-table")
    assert perf_tables.count() == 2
    assert perf_tables.nth(0).locator("tr").count() == 1 + len(PERF_CASES)
    assert page.locator("#max-batch tr").count() == 1 + 2
    assert page.locator("h3.accuracy-case").count() == 4
    page.locator("details.flipped summary").first.click()
    assert "Question number 1?" in page.locator("details.flipped").first.inner_text()
    assert "pass@1" in page.locator("#accuracy").inner_text()
    likelihood = page.locator("table.likelihood").first.inner_text()
    assert "-0.0123" in likelihood and "-0.0456 (margin -0.1)" in likelihood
    assert "0.0021 (limit 0.01)" in likelihood and "pass" in likelihood


def test_every_chart_is_a_non_empty_svg(page):
    page, _ = page
    charts = page.locator(".chart svg")
    assert charts.count() >= 2 * 3 + 2  # 3 perf charts per model, an accuracy chart per case
    for i in range(charts.count()):
        chart = charts.nth(i)
        assert chart.locator("path").count() > 5
        box = chart.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100


def test_the_report_loads_nothing_from_the_network(page):
    _, run = page
    html = (run / "index.html").read_text()
    assert "http://" not in html.replace("http://www.w3.org", "")
    assert "https://" not in html and "<link" not in html


def test_the_page_does_not_overflow_sideways_and_wide_tables_scroll_in_their_box(page):
    page, _ = page
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    boxes = page.locator("div.scroll")
    wide = 0
    for i in range(boxes.count()):
        box = boxes.nth(i)
        fits = box.evaluate("b => b.getBoundingClientRect().right <= window.innerWidth")
        assert fits and box.evaluate("b => getComputedStyle(b).overflowX") == "auto"
        wide += box.evaluate("b => b.scrollWidth > b.clientWidth")
    assert wide >= 1  # the example's side-by-side and perf tables are wider than the page


def test_case_ids_stay_on_one_line(page):
    page, _ = page
    cells = page.locator("table.perf-table td.case")
    assert cells.count() >= 2 * len(PERF_CASES)
    for i in range(cells.count()):
        lines = cells.nth(i).evaluate(
            "td => { const r = document.createRange(); r.selectNodeContents(td); "
            "return new Set([...r.getClientRects()].map(c => Math.round(c.top))).size; }")
        assert lines == 1, cells.nth(i).inner_text()


def test_a_failing_perf_case_is_shown_marked_with_its_whole_reason(page):
    page, _ = page
    failure = page.locator("#failures tr", has_text=FAILING_CASE)
    text = failure.inner_text()
    assert all(f in text for f in FAILURES)  # no reason cut, the third metric too
    row = page.locator("table.perf-table tr", has_text=FAILING_CASE)
    assert row.get_attribute("class") == "failed"
    assert "machine load 6.52 (1-minute average) on 2 CPUs" in page.locator("#load").inner_text()


def test_the_side_by_side_table_puts_each_stored_device_beside_ours(page):
    page, _ = page
    table = page.locator("#side-by-side-qwen-tiny")
    header = table.locator("tr").first.inner_text()
    assert "A100" in header and "910B3" in header and "dev-cpu" in header
    assert table.locator("tr").count() == 1 + 3 * len(PERF_CASES)
    first = table.locator("tr").nth(1).locator("td")
    assert first.count() == 7 + 2 * 3  # the case, ours, then theirs and the ratio per device
    assert first.nth(8).inner_text().endswith("x")
    assert page.locator("#slowdowns tr").count() == 1 + 5


def test_the_overview_agrees_with_the_records_and_links_to_their_cases(page):
    page, run = page
    rows = [r for r in latest_rows(load_records(run)) if r.get("model")]
    cells = page.locator("#overview td.cell")
    assert cells.count() == len({(r["model"], r["suite"], r["dtype"]) for r in rows})
    header = page.locator("#overview tr").first.locator("th")
    columns = [header.nth(i).inner_text() for i in range(1, header.count())]
    for line in page.locator("#overview tr").all()[1:]:
        model = line.locator("td").first.inner_text()
        for column, td in zip(columns, line.locator("td").all()[1:]):
            suite, dtype = column.split()
            mine = [r for r in rows if (r["model"], r["suite"], r["dtype"]) == (model, suite,
                                                                                dtype)]
            if not mine:
                assert td.inner_text() == ""
                continue
            failed = sum(tally(r) in ("failed", "error") for r in mine)
            assert (int(td.get_attribute("data-failed")), int(td.get_attribute("data-total"))) \
                == (failed, len(mine)), (model, column)
            assert ("failed" in td.get_attribute("class")) == (failed > 0)
            target = td.locator("a").get_attribute("href")
            skipped = all(r["outcome"] == "skipped" for r in mine)  # listed with the skips
            assert target == ("#skips" if skipped else f"#{suite}-{model}")
            assert page.locator(target).count() == 1
