"""Seeing results and comparing runs: `dvc plots show` and `dvc exp`."""

import json


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


def test_two_experiments_are_listed_with_their_params_and_test_accuracy(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "experiments")
    project.dvc("exp", "run", "-n", "short-mean", "-S", "tokenize.max_length=32", "-S", "embed.pooling=mean")
    project.dvc("exp", "run", "-n", "fast-lr", "-S", "train.lr=0.05")
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)

    experiments = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp["revs"]:
                data = revision["data"]
                experiments[revision.get("name") or exp.get("name")] = (
                    data["params"]["params.yaml"]["data"],
                    data["metrics"]["metrics/frozen_head.json"]["data"],
                )
    assert {"short-mean", "fast-lr"} <= set(experiments)
    params, metrics = experiments["short-mean"]
    assert params["tokenize"]["max_length"] == 32 and params["embed"]["pooling"] == "mean"
    assert 0 <= metrics["accuracy"] <= 1
    params, metrics = experiments["fast-lr"]
    # `dvc exp run` starts from the workspace, which the first experiment left at max_length 32
    assert params["train"]["lr"] == 0.05 and params["tokenize"]["max_length"] == 32
    assert 0 <= metrics["accuracy"] <= 1
