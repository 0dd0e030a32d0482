"""The tests' copies of the project hold what git tracks and the pristine params.yaml, never the
user's untracked files or edited params (zh_sentiment/sandbox.py)."""

import subprocess

import yaml

from tests.conftest import new_project
from zh_sentiment.sandbox import ROOT, git, pristine_params, ran_stages


def test_a_copy_leaves_out_untracked_files_and_params_edits_but_keeps_code_edits(tmp_path):
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
    (checkout / "models-src" / "bert").mkdir(parents=True)
    (checkout / "models-src" / "bert" / "model.safetensors").write_bytes(b"\0" * 1024)
    (checkout / "notes.txt").write_text("mine", encoding="utf-8")
    edited = yaml.safe_load((checkout / "params.yaml").read_text(encoding="utf-8"))
    edited["data"]["text_column"] = "text_a"
    (checkout / "params.yaml").write_text(yaml.safe_dump(edited), encoding="utf-8")
    with (checkout / "stages" / "train.py").open("a", encoding="utf-8") as file:
        file.write("# an edit not yet committed\n")

    project = new_project(tmp_path / "copy", {"train.lr": 0.5}, root=checkout)

    assert not (project.path / "models-src").exists() and not (project.path / "notes.txt").exists()
    assert not (project.path / "tests").exists()
    params = yaml.safe_load((project.path / "params.yaml").read_text(encoding="utf-8"))
    assert params["data"]["text_column"] == pristine_params(checkout)["data"]["text_column"] != "text_a"
    assert params["train"]["lr"] == 0.5
    assert (project.path / "stages" / "train.py").read_text(encoding="utf-8").endswith("# an edit not yet committed\n")
    assert project.run("git", "status", "--porcelain").stdout == ""  # all of it committed in the copy


def test_running_stages_are_read_from_dvc_output():
    output = "Running stage 'train':\n> python -m stages.train\ntrain: 80%\nRunning stage 'evaluate':\n"
    assert ran_stages(output) == ["train", "evaluate"]
    assert ran_stages("Stage 'fetch' didn't change, skipping\n") == []


def test_a_users_first_run_commit_and_later_commits_do_not_reach_the_copies(tmp_path):
    """README says to commit the first run (dvc.lock, metrics, params.yaml); users then commit their runs and
    params. The copies still get the project's own params.yaml and none of the runs' records."""
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
    shipped = pristine_params(checkout)
    for message, dataset, epochs in [("First run", "data/source/chnsenticorp", 1), ("lr 1e-4", "data/source/x", 7)]:
        edited = yaml.safe_load((checkout / "params.yaml").read_text(encoding="utf-8"))
        edited["data"]["dataset"], edited["finetune"]["epochs"] = dataset, epochs
        (checkout / "params.yaml").write_text(yaml.safe_dump(edited), encoding="utf-8")
        (checkout / "dvc.lock").write_text(f"schema: '2.0'\n# {message}\n", encoding="utf-8")
        (checkout / "metrics").mkdir(exist_ok=True)
        (checkout / "metrics/baseline.json").write_text('{"accuracy": 0.9}\n', encoding="utf-8")
        for command in (["add", "dvc.lock", "metrics", "params.yaml"], ["commit", "-q", "-m", message]):
            subprocess.run(["git", "-c", "user.email=u@example.com", "-c", "user.name=u", *command], cwd=checkout)

    project = new_project(tmp_path / "copy", {"train.lr": 0.5}, root=checkout)

    assert not (project.path / "dvc.lock").exists() and not (project.path / "metrics").exists()
    params = yaml.safe_load((project.path / "params.yaml").read_text(encoding="utf-8"))
    assert params["data"]["dataset"] == shipped["data"]["dataset"] == "lansinuote/ChnSentiCorp"
    assert params["finetune"]["epochs"] == shipped["finetune"]["epochs"] != 7
    assert pristine_params(checkout) == shipped


def test_pip_install_leaves_git_clean_its_egg_info_is_neither_tracked_nor_shown():
    assert [path for path in git("ls-files", cwd=ROOT).splitlines() if ".egg-info/" in path] == []
    ignored = subprocess.run(["git", "check-ignore", "-q", "zh_sentiment.egg-info/PKG-INFO"], cwd=ROOT)
    assert ignored.returncode == 0
