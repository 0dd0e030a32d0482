"""precision: auto on a CPU: bf16 only where a timed probe finds it clearly faster, decided once per machine."""

import json

import pytest
import torch

from zh_sentiment import precision
from zh_sentiment.finetune import choose_autocast
from zh_sentiment.precision import choose_precision


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache file of this test's own, and no decision kept in memory from earlier calls."""
    path = tmp_path / "precision.json"
    monkeypatch.setenv(precision.CACHE_ENV, str(path))
    precision.cached_cpu_decision.cache_clear()
    yield path
    precision.cached_cpu_decision.cache_clear()


@pytest.mark.parametrize(
    ("fp32_seconds", "bf16_seconds", "expected"),
    [
        (0.030, 0.012, "bf16"),  # AVX512-BF16: 2.5x faster
        (0.030, 0.210, "fp32"),  # AVX2 only: 7x slower
        (0.030, 0.025, "fp32"),  # 1.2x: not clearly faster
    ],
)
def test_auto_takes_bf16_only_where_the_probe_shows_it_clearly_faster(cache, fp32_seconds, bf16_seconds, expected):
    decision = precision.cpu_decision(run_probe=lambda: (fp32_seconds, bf16_seconds))
    assert decision["choice"] == expected
    assert decision["bf16_speedup"] == pytest.approx(fp32_seconds / bf16_seconds, abs=1e-3)
    assert (decision["fp32_ms"], decision["bf16_ms"]) == (fp32_seconds * 1000, bf16_seconds * 1000)
    # what embed and finetune then choose, with those figures in the cache
    assert choose_precision("auto", torch.device("cpu")) == expected
    assert choose_autocast("auto", torch.device("cpu")) == expected
    assert precision.precision_probe("auto", torch.device("cpu")) == decision


def test_the_decision_is_taken_once_per_machine_and_torch_version(cache, monkeypatch):
    probes = []

    def probe():
        probes.append(1)
        return (0.030, 0.012) if len(probes) == 1 else (0.030, 0.300)  # the machine got busy in between

    first = precision.cpu_decision(run_probe=probe)
    assert precision.cpu_decision(run_probe=probe) == first and len(probes) == 1  # read back, not probed again
    assert json.loads(cache.read_text(encoding="utf-8")) == {precision.machine_key(): first}

    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch: its own decision, the first one kept
    assert precision.cpu_decision(run_probe=probe)["choice"] == "fp32" and len(probes) == 2
    assert len(json.loads(cache.read_text(encoding="utf-8"))) == 2

    cache.unlink()  # clearing the cache probes again
    monkeypatch.undo()
    monkeypatch.setenv(precision.CACHE_ENV, str(cache))
    precision.cpu_decision(run_probe=probe)
    assert len(probes) == 3


def test_an_unreadable_cache_is_probed_afresh(cache):
    cache.write_text("{not json", encoding="utf-8")
    assert precision.cpu_decision(run_probe=lambda: (0.030, 0.012))["choice"] == "bf16"
    assert json.loads(cache.read_text(encoding="utf-8"))[precision.machine_key()]["choice"] == "bf16"


def test_the_real_probe_times_both_precisions():
    fp32_seconds, bf16_seconds = precision.probe()
    assert 0 < fp32_seconds < 5 and 0 < bf16_seconds < 5


def test_an_explicit_or_gpu_precision_runs_no_probe(cache, monkeypatch):
    monkeypatch.setattr(precision, "probe", lambda: pytest.fail("probed"))
    assert choose_autocast("fp32", torch.device("cpu")) == "fp32"
    assert choose_autocast("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_autocast("auto", torch.device("cuda")) == "bf16"
    assert precision.precision_probe("fp32", torch.device("cpu")) is None
    assert precision.precision_probe("auto", torch.device("cuda")) is None
    assert not cache.exists()
