"""README's experiment queue, run as written, on a local dataset kept where README says to keep it."""

import json
import shutil
import time

import pytest

from stages import fetch
from zh_sentiment.errors import PipelineError
from zh_sentiment.live import read_history
from zh_sentiment.sandbox import ROOT, edit_params, pristine_params, ran_stages

LOCAL = "data/source/chnsenticorp"  # README's Offline section keeps the dataset here


def readme_block(heading: str) -> str:
    """The first bash block of README.md after `heading`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("```bash\n", text.index(heading)) + len("```bash\n")
    return text[start : text.index("```", start)]


def experiments(project) -> dict[str, dict]:
    """Each experiment of `dvc exp show`: its error (None), params and metrics, by name."""
    found = {}
    for commit in json.loads(project.dvc("exp", "show", "--json").stdout):
        for experiment in commit.get("experiments") or []:
            for revision in experiment["revs"]:
                data = revision["data"]
                found[revision.get("name") or experiment.get("name")] = {
                    "error": revision.get("error"),
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": data.get("metrics", {}),
                }
    return found


def test_readme_lr_loop_runs_the_queue_on_a_local_dataset(trained_project, reviews_folder, tmp_path):
    project = trained_project.copy(tmp_path / "queue")
    shutil.copytree(reviews_folder[0], project.path / LOCAL)
    project.set_params({"data.dataset": LOCAL})
    # the same reviews from their new place; the model stages re-run for their cards, which name the dataset (a new
    # name here, so the frozen head's card, and evaluate after it)
    assert project.repro() == ["fetch", "train", "evaluate", "baseline", "finetune"]
    project.commit("the dataset under data/source")

    loop = readme_block("**Many experiments.**")
    assert "finetune.lr=$lr" in loop and "dvc queue start" in loop
    project.run("bash", "-c", f"set -e\n{loop}")  # DVC writes 0.00002 as 2e-05, which PyYAML reads as text
    try:
        deadline = time.monotonic() + 900
        while any(state in project.dvc("queue", "status").stdout for state in ("Queued", "Running")):
            assert time.monotonic() < deadline, project.dvc("queue", "status").stdout
            time.sleep(2)
        status = project.dvc("queue", "status").stdout
    finally:
        project.dvc("queue", "stop", "--kill", check=False)
    found = experiments(project)
    print(status)
    assert sorted(float(exp["params"]["finetune"]["lr"]) for exp in found.values()) == [2e-05, 5e-05, 1e-04]
    assert status.count("Success") == 3 and "Failed" not in status, status
    assert all(exp["error"] is None for exp in found.values())
    assert all("metrics/finetuned.json" in exp["metrics"] for exp in found.values())


def test_a_local_dataset_left_out_of_a_queued_experiment_says_to_copy_it(tmp_path, monkeypatch):
    copy = tmp_path / "project/.dvc/tmp/exps/tmpabc123"  # where `dvc exp run --queue` runs an experiment
    (copy / "data/source").mkdir(parents=True)
    edit_params(copy / "params.yaml", {"data.dataset": LOCAL}, base=pristine_params())
    monkeypatch.chdir(copy)
    with pytest.raises(PipelineError) as caught:
        fetch.main()
    assert f"folder {LOCAL} is not in this experiment's temporary copy" in str(caught.value)
    assert f"`--copy-paths {LOCAL}`" in str(caught.value)


def test_an_experiment_shows_its_epochs_in_exp_show_and_its_curves_in_plots(trained_project, tmp_path):
    """dvclive logs each epoch (zh_sentiment/live.py): `dvc exp show` has the last epoch reached (what it shows of a
    running experiment, epoch by epoch) and `dvc plots diff` draws the experiment's curves next to the commit's."""
    project = trained_project.copy(tmp_path / "live")
    result = project.dvc("exp", "run", "-n", "slow-lr", "-S", "train.lr=0.002")
    assert ran_stages(result.stdout) == ["train", "evaluate"]
    history = read_history("frozen_head", project.path)  # the experiment's, applied to the workspace
    assert list(history["epoch"]) == list(range(1, project.json("metrics/frozen_head/training.json")["epochs_run"] + 1))

    live = experiments(project)["slow-lr"]["metrics"]["metrics/frozen_head/live/metrics.json"]["data"]
    assert live == {"step": history["epoch"].iloc[-1], "validation_accuracy": history["validation_accuracy"].iloc[-1]}

    plots = json.loads(project.dvc("plots", "diff", "HEAD", "slow-lr", "--json").stdout)["data"]
    (curves,) = plots["Frozen head, loss per epoch"]
    assert curves["revisions"] == ["HEAD", "slow-lr"]
    drawn = [row for row in curves["content"]["data"]["values"] if row["rev"] == "slow-lr" and "train_loss" in row]
    assert [(int(row["step"]), float(row["train_loss"])) for row in drawn] == list(
        zip(history["epoch"], history["train_loss"], strict=True)
    )
    committed = read_history("frozen_head", trained_project.path)
    assert len([row for row in curves["content"]["data"]["values"] if row["rev"] == "HEAD"]) == 2 * len(committed)
