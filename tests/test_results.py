"""Seeing results and comparing runs: `dvc plots show` and `dvc exp`."""

import json
import os
import re
import sys
from pathlib import Path

import dvc.api
import numpy as np
import yaml

from tests.conftest import new_project
from zh_sentiment.report import write_test_report
from zh_sentiment.sandbox import ran_stages


def test_plots_show_draws_every_plot_on_one_page(trained_project, tmp_path):
    out = tmp_path / "plots"
    trained_project.dvc("plots", "show", "-o", str(out))
    page = (out / "index.html").read_text(encoding="utf-8")
    for title in ["loss per epoch", "accuracy per epoch", "test confusion matrix", "test ROC curve"]:
        assert title in page, title
    assert "token_lengths.png" in page
    assert list(out.rglob("*token_lengths.png"))
    for column in ["train_loss", "validation_loss", "train_accuracy", "validation_accuracy", "fpr", "tpr"]:
        assert column in page, column


def test_an_experiment_is_listed_with_its_params_and_test_accuracy(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "experiments")
    project.set_params({"train.batch_size": 16})  # `dvc exp run` starts from the workspace, edits included
    output = project.dvc("exp", "run", "-n", "fast-lr", "-S", "train.lr=0.05").stdout
    assert ran_stages(output) == ["train", "evaluate"]
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)

    experiments = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp["revs"]:
                data = revision["data"]
                experiments[revision.get("name") or exp.get("name")] = (
                    revision["rev"],
                    data["params"]["params.yaml"]["data"],
                    data["metrics"]["metrics/frozen_head.json"]["data"],
                )
    rev, params, metrics = experiments["fast-lr"]
    assert params["train"]["lr"] == 0.05 and params["train"]["batch_size"] == 16
    # the table shows the metrics the experiment committed (a DVC output: its commit's dvc.lock names them in the
    # cache), which are also those left in the workspace
    committed = json.loads(dvc.api.read("metrics/frozen_head.json", repo=str(project.path), rev=rev))
    assert metrics == committed == project.json("metrics/frozen_head.json")
    assert set(metrics) >= {"accuracy", "f1_macro", "roc_auc"}


# What a user sees offline: the PNG images on the `dvc plots show` page


def is_png(path) -> bool:
    """A whole PNG: the signature, and an image matplotlib can decode."""
    import matplotlib.image

    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(path).size > 0


def test_plots_page_shows_every_image_the_pipeline_writes(trained_project, tmp_path):
    out = tmp_path / "plots"
    trained_project.dvc("plots", "show", "-o", str(out))
    page = (out / "index.html").read_text(encoding="utf-8")
    shown = re.findall(r'<img src="([^"]+)"', page)
    written = sorted(p.relative_to(trained_project.path) for p in (trained_project.path / "metrics").rglob("*.png"))
    for model in ["frozen_head"]:
        for name in ["curves.png", "confusion.png", "roc.png"]:
            assert Path("metrics", model, name) in written, name
    # DVC copies each image to static/<revision>_<path with / as _>
    for image in written:
        matches = [src for src in shown if src.endswith("_".join(image.parts))]
        assert len(matches) == 1, f"{image} is not on the plots page: {shown}"
        assert is_png(out / matches[0]), matches[0]
    assert len(shown) == len(written)


def test_vega_plots_name_the_quantity_on_each_axis(trained_project):
    plots = yaml.safe_load((trained_project.path / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    vega = [next(iter(plot.values())) for plot in plots if isinstance(plot, dict)]
    assert vega
    for plot in vega:
        assert plot.get("x_label") and plot.get("y_label") not in (None, "y"), plot


def test_images_are_the_same_bytes_when_re_rendered(trained_project, tmp_path):
    """Deterministic images, so a re-run that changes nothing leaves git and `dvc status` clean."""
    project = trained_project.copy(tmp_path / "again")
    project.stage("train")
    project.stage("evaluate")
    assert project.run("git", "status", "--porcelain").stdout == ""
    assert "up to date" in project.dvc("status").stdout


# `dvc metrics show`: one narrow table comparing the models


def test_metrics_show_fits_in_120_columns(trained_project):
    lines = trained_project.dvc("metrics", "show").stdout.splitlines()
    assert lines[0].split()[0] == "Path" and any(line.startswith("metrics/frozen_head.json") for line in lines)
    assert max(len(line) for line in lines) <= 120, "\n".join(lines)


# README journeys, run as written


def test_returning_from_an_experiment_restores_the_commit(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "return")
    project.dvc("exp", "run", "-S", "train.lr=0.05")
    # what README used to say: params go back, but dvc.lock and metrics/ keep the experiment's
    project.run("git", "checkout", "params.yaml")
    project.dvc("checkout")
    assert "dvc.lock" in project.run("git", "status", "--porcelain").stdout
    assert "up to date" not in project.dvc("status").stdout
    # what README says now
    project.run("git", "checkout", "--", "dvc.lock", "metrics", "params.yaml")
    project.dvc("checkout")
    assert project.run("git", "status", "--porcelain").stdout == ""
    assert "Data and pipelines are up to date." in project.dvc("status").stdout


def test_a_failed_first_repro_leaves_no_data_for_git_to_add(project):
    """DVC removes the .gitignore entries it wrote when a first repro fails; the project's own stay."""
    project.set_params({"model.name": str(project.path / "no-such-model")})
    assert project.dvc("repro", check=False).returncode != 0
    assert (project.path / "data/raw").is_dir() and (project.path / "data/clean").is_dir()
    added = [line.split("'")[1] for line in project.run("git", "add", "-A", "--dry-run").stdout.splitlines()]
    assert "metrics/data/clean.json" in added  # the stages that ran did write
    assert not [path for path in added if path.startswith(("data/", "models/"))], added


def test_repro_leaves_gitignore_files_alone(trained_project):
    """The outputs are ignored by the project's .gitignore, so DVC writes no .gitignore files of its own."""
    tracked = trained_project.run("git", "ls-files").stdout.splitlines()
    assert [path for path in tracked if path.endswith(".gitignore") and not path.startswith(".dvc/")] == [".gitignore"]
    outputs = [path for path in tracked if path.startswith(("data/", "models/", "dvc_plots/"))]
    # what says what data/source/ is for, and the reviewed label decisions (a small file kept in git)
    assert outputs == ["data/label_fixes.csv", "data/source/README.md"]
    assert trained_project.run("git", "status", "--porcelain").stdout == ""


def test_an_unreachable_hub_dataset_points_to_the_offline_section_and_model_name(tmp_path, tmp_path_factory):
    project = new_project(tmp_path / "project", {"data.dataset": "lansinuote/ChnSentiCorp"})
    hf_home = tmp_path_factory.mktemp("hf-home")  # an empty cache: the dataset is never found there
    env = {key: value for key, value in os.environ.items() if key != "PIPELINE_DEBUG"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), HF_DATASETS_CACHE=str(hf_home / "datasets"))
    result = project.run(sys.executable, "-m", "stages.fetch", check=False, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert 'README.md, section "Offline"' in result.stderr
    assert "model.name" in result.stderr


def test_metrics_diff_has_a_baseline_once_the_first_run_is_committed(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "first-run")
    project.run("git", "reset", "-q", "--mixed", "HEAD~1")  # as after the first `dvc repro`, nothing committed
    rows = [line.split() for line in project.dvc("metrics", "diff").stdout.splitlines()[1:]]
    assert rows and all(row[2] == "-" for row in rows)  # HEAD has no metrics yet
    # what README says to do after the first run
    project.run("git", "add", "dvc.lock", "metrics", "params.yaml")
    project.run("git", "commit", "-q", "-m", "First run")
    assert project.dvc("metrics", "diff").stdout == ""
    assert project.run("git", "status", "--porcelain").stdout == ""


def test_report_images_are_whole_pngs_with_the_same_bytes_each_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the images go to metrics/<model>/ under the working folder
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    probabilities = np.full((9, 3), 0.1)
    probabilities[np.arange(9), [0, 0, 1, 1, 1, 2, 2, 2, 0]] = 0.8
    folder, images = tmp_path / "metrics/some_model", []
    for _ in range(2):
        write_test_report("some_model", y, probabilities, ["负面", "中性", "正面"], ["text"] * 9, 0.5)
        images.append({name: (folder / name).read_bytes() for name in ["confusion.png", "roc.png"]})
    assert images[0] == images[1]
    assert all(is_png(folder / name) for name in images[0])
