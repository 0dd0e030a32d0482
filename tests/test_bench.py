"""The benchmark runs end to end on a tiny encoder and regenerates README's table from its results.

rerun and memory run the real stages in subprocesses (a minute or more here), so this smoke test
leaves them out; `python -m bench --smoke` runs them all."""

import json

import pytest

from bench import __main__ as bench
from bench.readme import END, START


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    readme = folder / "README.md"
    readme.write_text(f"# Title\n\n{START}\nold table, typed by hand\n{END}\n\n## Next\n", encoding="utf-8")
    argv = [
        "--smoke",
        "--only",
        "encoder_speed",
        "classic",
        "precision",
        "finetune_levers",
        "finetune_memory",
        "finetune_epochs",
        "--results",
        str(folder / "results.json"),
    ]
    bench.main([*argv, "--readme", str(readme)])
    return json.loads((folder / "results.json").read_text(encoding="utf-8")), readme.read_text(encoding="utf-8")


def test_every_measurement_asked_for_gives_rows_with_numbers(smoke):
    results, _ = smoke
    assert list(results["measurements"]) == [
        "encoder_speed",
        "classic",
        "precision",
        "finetune_levers",
        "finetune_memory",
        "finetune_epochs",
    ]
    for rows in results["measurements"].values():
        assert rows and all(isinstance(row["value"], float) and row["value"] == row["value"] for row in rows)
    speed = {row["measurement"].split(":")[0]: row["value"] for row in results["measurements"]["encoder_speed"]}
    assert speed["embed / ceiling"] > 0


def test_the_readme_table_is_regenerated_between_the_markers(smoke):
    results, readme = smoke
    assert "old table" not in readme
    assert readme.startswith("# Title\n\n" + START) and readme.endswith(END + "\n\n## Next\n")
    for rows in results["measurements"].values():
        for row in rows:
            assert f"| {row['shown']} |" in readme


def test_adding_a_measurement_is_one_name_in_the_runner():
    for name in bench.MEASUREMENTS:
        assert callable(__import__(f"bench.{name}", fromlist=["measure"]).measure)
