"""Seeing results and comparing runs: `dvc plots show` and `dvc exp`."""

import json

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
    # the table shows the metrics the experiment committed, which are also those left in the workspace
    committed = json.loads(project.run("git", "show", f"{rev}:metrics/frozen_head.json").stdout)
    assert metrics == committed == project.json("metrics/frozen_head.json")
    assert set(metrics) >= {"accuracy", "f1_macro", "roc_auc"}
