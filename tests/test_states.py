"""The cached hidden states: embed records a checksum of each file, finetune checks it before training,
and a missing or damaged file is one message saying how to get a whole one back."""

import hashlib
import json
import os
import stat
import struct
from pathlib import Path

import pytest
import torch

from zh_sentiment.errors import PipelineError
from zh_sentiment.states import CachedStates, cache_object, check_states, save_states

STATES = "data/states/train.safetensors"


def link_to_cache(project, relative: str) -> Path:
    """As DVC's hardlink cache leaves an output (a copied project has two files): the file and its cache object
    one inode. Returns the object, relative to the project."""
    found = Path(cache_object(Path(relative), project.path))
    (project.path / relative).unlink()
    os.link(project.path / found, project.path / relative)
    project.dvc("status")  # DVC records the link's inode with its (still right) hash, as after a real run
    return found


def damage(path, how: str) -> None:
    """Damage `path` as a stray write would: `truncated`, or its tensors overwritten with zeros keeping its
    size, header and mtime (DVC, which goes by size and mtime, sees nothing)."""
    before = path.stat()
    os.chmod(path, before.st_mode | stat.S_IWUSR)  # DVC's links are read-only; root writes them anyway
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        header = 8 + struct.unpack("<Q", data[:8])[0]
        with open(path, "r+b") as file:
            file.seek(header)
            file.write(bytes(len(data) - header))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    os.chmod(path, before.st_mode)


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
def test_damaged_states_stop_finetune_with_how_to_rebuild_them(trained_project, tmp_path, how):
    project = trained_project.copy(tmp_path / how)
    cached = link_to_cache(project, STATES)
    damage(project.path / STATES, how)
    project.set_params({"finetune.lr": 0.0005})  # finetune runs again, on whatever data/states holds
    result = project.dvc("repro", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"error: {STATES} is damaged" in output and "Traceback" not in output
    assert f"rm -f {STATES} {cached}" in output  # the cache object: the same inode
    assert "`dvc repro -f -s embed`" in output
    if how == "truncated":  # the advice, followed, gives whole states again, in the workspace and the cache
        project.run("rm", "-f", STATES, str(cached))
        project.dvc("repro", "-f", "-s", "embed")
        info = json.loads((project.path / "data/states/states.json").read_text(encoding="utf-8"))
        check_states(project.path / "data/states", info)
        assert hashlib.sha256((project.path / cached).read_bytes()).hexdigest() == info["sha256"]["train.safetensors"]


def test_a_missing_states_file_is_named(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "missing")
    (project.path / "data/states/validation.safetensors").unlink()
    result = project.stage("finetune", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: data/states/validation.safetensors is missing" in result.stderr
    assert "dvc repro -f -s embed" in result.stderr


def test_cached_states_refuse_a_missing_or_unreadable_file_with_a_message(tmp_path):
    with pytest.raises(PipelineError, match=r"gone.safetensors is missing .*dvc repro -f -s embed"):
        CachedStates(tmp_path / "gone.safetensors")
    path = tmp_path / "train.safetensors"
    save_states(path, torch.zeros(6, 4, dtype=torch.float16), torch.tensor([2, 4]), torch.tensor([0, 1]))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(PipelineError, match=r"train.safetensors is damaged: it cannot be read as safetensors"):
        CachedStates(path)


def test_embed_records_the_checksum_of_every_states_file(trained_project):
    info = json.loads((trained_project.path / "data/states/states.json").read_text(encoding="utf-8"))
    files = sorted(path.name for path in (trained_project.path / "data/states").glob("*.safetensors"))
    assert sorted(info["sha256"]) == files == ["test.safetensors", "train.safetensors", "validation.safetensors"]
    for name, digest in info["sha256"].items():
        assert hashlib.sha256((trained_project.path / "data/states" / name).read_bytes()).hexdigest() == digest
