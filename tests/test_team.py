"""README's "Share it with your team", run as written against a real S3 store on this machine (tests/s3.py):
an owner who ran the pipeline pushes it, a teammate in another folder clones and pulls it, and runs nothing."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Project, ran_stages
from tests.s3 import BUCKET, running_store
from tests.server import free_port, running_server
from zh_sentiment.live import read_history
from zh_sentiment.model_folder import read_info
from zh_sentiment.sandbox import python_first_env

LOCAL = "data/source/reviews"  # a local dataset where data/source/README.md says to keep it
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
REVIEWS = ["前台很热情，房间干净舒服，很满意推荐", "房间很脏太差，前台冷漠，失望退货"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with running_store(tmp_path_factory.mktemp("s3")) as store:
        yield store


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def share(owner: Project, store, prefix: str) -> Path:
    """README's owner steps: a default S3 remote, `dvc push --run-cache`, `git push` to a bare `origin`."""
    owner.dvc("remote", "add", "-d", "storage", f"s3://{BUCKET}/{prefix}")
    owner.dvc("remote", "modify", "storage", "endpointurl", store.endpoint)
    owner.dvc("remote", "modify", "storage", "verify", "true")
    owner.commit("the team's remote")
    owner.dvc("push", "--run-cache", env=store.env())
    origin = owner.path.parent / "origin.git"
    git("init", "-q", "--bare", str(origin), cwd=owner.path.parent)
    owner.run("git", "remote", "add", "origin", str(origin))
    owner.run("git", "push", "-q", "origin", "HEAD:refs/heads/main")
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=origin)
    return origin


def clone(origin: Path, dest: Path, store) -> Project:
    """A teammate's `git clone`, with the keys in .dvc/config.local (`dvc remote modify --local`), as README says."""
    git("clone", "-q", str(origin), str(dest), cwd=origin.parent)
    teammate = Project(dest)
    teammate.run("git", "config", "user.email", "teammate@example.com")
    teammate.run("git", "config", "user.name", "teammate")
    teammate.dvc("remote", "modify", "--local", "storage", "access_key_id", store.env()["AWS_ACCESS_KEY_ID"])
    teammate.dvc("remote", "modify", "--local", "storage", "secret_access_key", store.env()["AWS_SECRET_ACCESS_KEY"])
    return teammate


def predictions(project: Project) -> str:
    """What `zh-sentiment predict` prints for REVIEWS in `project` (the real command, in a subprocess)."""
    return project.run("python", "-m", "zh_sentiment", "predict", *REVIEWS).stdout


@pytest.fixture(scope="module")
def owner(trained_project, tmp_path_factory, store) -> Project:
    """The trained project, shared through `origin` and the store; its origin is owner.path.parent / origin.git."""
    owner = trained_project.copy(tmp_path_factory.mktemp("team") / "owner")
    share(owner, store, "hub")
    return owner


@pytest.fixture(scope="module")
def local_owner(trained_project, reviews_folder, tmp_path_factory, store) -> Project:
    """The trained project on a dataset under data/source/, tracked with `dvc add` as README says, shared."""
    owner = trained_project.copy(tmp_path_factory.mktemp("team-local") / "owner")
    shutil.copytree(reviews_folder[0], owner.path / LOCAL)
    owner.dvc("add", LOCAL)
    owner.set_params({"data.dataset": LOCAL})
    # the same reviews from their new place: the data after fetch is the same; the model stages re-run because
    # their model cards name the dataset (data.dataset is their param too)
    assert owner.repro() == ["fetch", "train", "baseline", "finetune"]
    owner.commit("the dataset under data/source, tracked by DVC")
    share(owner, store, "local")
    return owner


def assert_teammate_needs_nothing_run(owner: Project, teammate: Project) -> None:
    assert teammate.dvc("status").stdout.strip() == "Data and pipelines are up to date."
    assert teammate.repro() == []
    assert predictions(teammate) == predictions(owner)


def test_a_teammate_who_clones_and_pulls_predicts_at_once_and_reruns_nothing(owner, store, tmp_path):
    teammate = clone(owner.path.parent / "origin.git", tmp_path / "teammate", store)
    assert not (teammate.path / "models/finetuned").exists()
    teammate.dvc("pull")
    assert (teammate.path / "models/finetuned/model.safetensors").exists()
    assert_teammate_needs_nothing_run(owner, teammate)


def test_a_local_dataset_under_data_source_travels_too(local_owner, store, tmp_path):
    teammate = clone(local_owner.path.parent / "origin.git", tmp_path / "teammate", store)
    assert (teammate.path / f"{LOCAL}.dvc").exists() and not (teammate.path / LOCAL).exists()
    teammate.dvc("pull")
    assert (teammate.path / LOCAL / "train.csv").read_bytes() == (local_owner.path / LOCAL / "train.csv").read_bytes()
    assert_teammate_needs_nothing_run(local_owner, teammate)


def test_params_someone_already_ran_are_restored_from_the_run_cache_not_run(owner, store, tmp_path):
    """The owner tried mean pooling and another fine-tuning lr; a teammate who sets the same params gets every stage
    those touch (embed's encoder pass, train, evaluate, label_issues, finetune) from the remote's run-cache:
    `dvc repro --pull` runs nothing. DVC restores a run only when every output is on the remote, reports included."""
    trial = owner.copy(tmp_path / "trial")
    tried = {"embed.pooling": "mean", "finetune.lr": 0.001}
    trial.set_params(tried)
    assert trial.repro() == ["embed", "train", "evaluate", "label_issues", "finetune"]  # states: not on pooling
    trial.dvc("push", "--run-cache", env=store.env())

    teammate = clone(owner.path.parent / "origin.git", tmp_path / "teammate", store)
    teammate.set_params(tried)
    result = teammate.dvc("repro", "--pull")
    for stage in ["embed", "train", "evaluate", "label_issues", "finetune"]:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in result.stdout, result.stdout
    assert ran_stages(result.stdout) == [], result.stdout
    for model in ["frozen_head", "finetuned"]:
        assert teammate.json(f"metrics/{model}.json") == trial.json(f"metrics/{model}.json")
        assert read_history(model, teammate.path).equals(read_history(model, trial.path))
    assert (teammate.path / "metrics/finetuned/curves.png").read_bytes() == (
        trial.path / "metrics/finetuned/curves.png"
    ).read_bytes()
    assert predictions(teammate) == predictions(trial)
    assert teammate.dvc("status").stdout.strip() == "Data and pipelines are up to date."


def test_a_released_model_is_got_without_a_clone_and_served(owner, store, tmp_path):
    """README's release: a GTO tag names the version; `dvc artifacts get` fetches that folder from the remote."""
    owner.run("git", "tag", "-a", "finetuned@v1.0.0", "-m", "finetuned v1.0.0")  # GTO reads annotated tags only
    owner.run("git", "push", "-q", "origin", "finetuned@v1.0.0")
    origin = str(owner.path.parent / "origin.git")
    server_side = Project(tmp_path)
    server_side.dvc("artifacts", "get", origin, "finetuned", "--rev", "v1.0.0", "-o", "finetuned-v1", env=store.env())
    got = tmp_path / "finetuned-v1"
    assert not (tmp_path / ".git").exists() and not (tmp_path / ".dvc").exists()  # no clone, no project
    assert read_info(got)["fingerprint"] == read_info(owner.path / "models/finetuned")["fingerprint"]
    with running_server(tmp_path, "--model-dir", "finetuned-v1") as server:
        status, answer = server.post({"inputs": REVIEWS[0]})
        started = server.output()
    assert status == 200 and answer[0]["label"] == "positive", answer
    assert "chosen with --model-dir" in started, started


def test_an_experiment_travels_with_its_models_and_metrics(owner, store, tmp_path):
    """The owner pushes a named experiment; a teammate pulls it, sees it, applies it, and runs nothing."""
    tried = owner.copy(tmp_path / "owner")
    result = tried.dvc("exp", "run", "-n", "lr-trial", "-S", "train.lr=0.02")
    assert ran_stages(result.stdout) == ["train", "evaluate"]
    tried.dvc("exp", "push", "origin", "lr-trial", env=store.env())
    measured = tried.json("metrics/frozen_head.json")

    teammate = clone(owner.path.parent / "origin.git", tmp_path / "teammate", store)
    teammate.dvc("exp", "pull", "origin", "lr-trial")
    shown = teammate.dvc("exp", "show", "--csv").stdout.splitlines()  # the table, not cut to a terminal's width
    assert any(line.startswith("lr-trial,") for line in shown), shown
    teammate.dvc("exp", "apply", "lr-trial")
    assert teammate.json("metrics/frozen_head.json") == measured
    assert (teammate.path / "models/frozen_head/head.pt").read_bytes() == (
        tried.path / "models/frozen_head/head.pt"
    ).read_bytes()
    assert teammate.dvc("status").stdout.strip() == "Data and pipelines are up to date."
    assert teammate.repro() == []


def files_under(folder: Path) -> dict[str, int]:
    """Every file of the workspace and the cache under `folder`, and its size: what a failed pull must leave as it
    was (DVC's own scratch files in .dvc/tmp aside)."""
    files = (path for path in folder.rglob("*") if path.is_file() and ".dvc/tmp" not in path.as_posix())
    return {str(path.relative_to(folder)): path.stat().st_size for path in files}


@pytest.mark.parametrize(
    ("fault", "dvc_says", "check_says"),
    [
        ("wrong keys", "Forbidden", "the store refused the keys"),
        ("no keys", "Unable to locate credentials", "no keys: set AWS_ACCESS_KEY_ID"),
        # a named output: DVC takes the missing bucket for missing objects ("... do not exist neither locally nor on
        # remote"); a whole `dvc pull` says "The specified bucket does not exist"
        ("missing bucket", "do not exist", "bucket 'no-such-bucket' does not exist"),
        ("remote down", "Could not connect to the endpoint URL", "cannot connect to http://127.0.0.1:"),
    ],
)
def test_a_failing_remote_touches_nothing_and_remote_check_says_what_to_check(
    owner, store, tmp_path, fault, dvc_says, check_says
):
    """DVC's pull fails without a traceback and changes nothing; `zh-sentiment remote-check` then names the remote
    and the setting to check, in one line, at once (DVC retries a store that is down for minutes)."""
    teammate = clone(owner.path.parent / "origin.git", tmp_path / "teammate", store)
    teammate.dvc("pull", "models/baseline")  # something in the cache and workspace already, to stay as it is
    if fault == "wrong keys":
        teammate.dvc("remote", "modify", "--local", "storage", "secret_access_key", "not-the-key")
    elif fault == "no keys":
        (teammate.path / ".dvc/config.local").unlink()
    elif fault == "missing bucket":
        teammate.dvc("remote", "modify", "--local", "storage", "url", "s3://no-such-bucket/hub")
    else:
        teammate.dvc("remote", "modify", "--local", "storage", "endpointurl", f"http://127.0.0.1:{free_port()}")
    before = files_under(teammate.path)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    pulled = teammate.run(sys.executable, "-m", "dvc", "pull", "models/finetuned", check=False, env=env)
    assert pulled.returncode != 0 and "Traceback" not in pulled.stderr + pulled.stdout
    assert dvc_says in pulled.stderr, pulled.stderr
    assert files_under(teammate.path) == before

    checked = teammate.run("python", "-m", "zh_sentiment", "remote-check", check=False, env=env)
    assert checked.returncode == 1
    assert checked.stderr.startswith("error: remote 'storage' (s3://") and check_says in checked.stderr
    assert len(checked.stderr.splitlines()) == 1, checked.stderr


def test_remote_check_says_a_sound_remote_answers(owner, store, tmp_path):
    teammate = clone(owner.path.parent / "origin.git", tmp_path / "teammate", store)
    checked = teammate.run("python", "-m", "zh_sentiment", "remote-check")
    where = f"remote 'storage' (s3://{BUCKET}/hub at {store.endpoint})"
    assert checked.stdout == f"{where}: answers, with these keys and this bucket\n"


def test_an_interrupted_pull_leaves_nothing_that_looks_complete_and_the_next_finishes(owner, store, tmp_path):
    teammate = clone(owner.path.parent / "origin.git", tmp_path / "teammate", store)
    cache = teammate.path / ".dvc/cache/files/md5"
    pull = subprocess.Popen(
        [sys.executable, "-m", "dvc", "pull", "--jobs", "1"], cwd=teammate.path, env=python_first_env(), **QUIET
    )
    try:
        while not (cache.exists() and any(cache.rglob("*"))) and pull.poll() is None:
            time.sleep(0.05)
    finally:
        pull.kill()
        pull.wait()
    assert not (teammate.path / "models/finetuned").exists()  # the fetch writes the cache; checkout comes after
    assert "Data and pipelines are up to date." not in teammate.dvc("status").stdout
    teammate.dvc("pull")
    assert_teammate_needs_nothing_run(owner, teammate)


def test_an_object_damaged_on_the_remote_is_refused_by_checksum(owner, store, tmp_path):
    """README's remote has `verify true`: DVC hashes what it downloads, and refuses an object that differs."""
    key = f"hub/files/md5/{object_of(owner, 'models/finetuned/config.json')}"
    client = store.client()
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=original.replace(b"}", b', "damaged": true}'))
    try:
        teammate = clone(owner.path.parent / "origin.git", tmp_path / "teammate", store)
        result = teammate.dvc("pull", check=False)
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=original)
    assert result.returncode != 0 and "models/finetuned" in result.stderr
    assert not (teammate.path / "models/finetuned").exists()
    assert (teammate.path / "models/baseline/model.json").exists()  # the sound objects are checked out
    teammate.dvc("pull")  # the remote repaired: the next pull completes
    assert_teammate_needs_nothing_run(owner, teammate)


def object_of(project: Project, path: str) -> str:
    """The remote key (md5 as xx/rest) of a DVC-tracked file."""
    md5 = project.dvc("ls", "--dvc-only", "--show-hash", ".", path).stdout.split()[0]
    return f"{md5[:2]}/{md5[2:]}"
