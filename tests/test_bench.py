"""Bench: statistics, result types, timing plumbing and the torch worker on CPU; real runs on GPU."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from trt_fixtures import conv_model, skip_gpu_tests_without_trt  # noqa: F401

from dynashape import bench
from dynashape.bench import BenchResult, LatencyStats, ShapeResult
from dynashape.errors import DynashapeError
from dynashape.shapes import Profile


def _stats(median: float) -> LatencyStats:
    return LatencyStats(median, median * 1.5, median, median * 0.9, 100, "wall-sync")


def test_stats_from_samples_median_and_nearest_rank_p99() -> None:
    samples = [float(i) for i in range(1, 101)]  # 1..100
    s = LatencyStats.from_samples(list(reversed(samples)), "wall-sync")
    assert s.median_ms == 50.5 and s.p99_ms == 99.0 and s.min_ms == 1.0 and s.iters == 100
    assert LatencyStats.from_samples([3.0], "x").p99_ms == 3.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([], "x")


def test_ratios_and_json() -> None:
    row = ShapeResult({"input": (1, 3, 256, 256)}, dynamic=_stats(1.2), static=_stats(1.0), torch=_stats(6.0))
    assert row.dynamic_vs_static == pytest.approx(1.2)
    assert row.torch_vs_dynamic == pytest.approx(5.0)
    assert ShapeResult({"input": (1,)}).dynamic_vs_static is None
    res = BenchResult("m.engine", "fp16", "H100 (sm 9.0)", "8.5.3.1", [row], ["timing: wall-sync"])
    data = json.loads(bench.to_json(res))
    assert data["rows"][0]["shapes"] == "input:1x3x256x256"
    assert data["rows"][0]["dynamic_vs_static"] == pytest.approx(1.2)
    assert data["rows"][0]["static"]["median_ms"] == 1.0


def test_sample_wall_sync_respects_iters_and_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "_torch_cuda", lambda: None)
    monkeypatch.setattr(bench, "_batch_size", lambda launch, sync: 1)
    calls = {"launch": 0, "sync": 0}

    def launch() -> None:
        calls["launch"] += 1

    def sync() -> None:
        calls["sync"] += 1

    s = bench._sample(launch, sync, warmup=3, iters=50, budget_s=10.0)
    assert s.iters == 50 and s.method == "wall-sync" and calls["launch"] == 53
    s = bench._sample(launch, sync, warmup=0, iters=1000, budget_s=0.0)
    assert s.iters == bench.MIN_ITERS  # budget spent: still the minimum number of samples


class FakeClock:
    """``time.perf_counter`` that advances only when the fake GPU works."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wall_sync_batches_launches_and_divides_out_the_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(bench, "_torch_cuda", lambda: None)
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    launches = 0

    def launch() -> None:  # 0.25 ms of device work per run
        nonlocal launches
        launches += 1
        clock.now += 0.25e-3

    def sync() -> None:  # 0.05 ms to learn that the stream is idle
        clock.now += 0.05e-3

    s = bench._sample(launch, sync, warmup=0, iters=30, budget_s=1.0)
    batch = 7  # ceil(BATCH_TARGET_MS 2.0 / (0.25 + 0.05))
    assert s.method == f"wall-sync/{batch}" and s.iters == 30
    assert launches == 1 + 30 * batch  # one calibration run, then 30 batches
    assert s.median_ms == pytest.approx(0.25 + 0.05 / batch)  # the sync's cost is spread thin


def test_time_engine_times_only_the_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "_torch_cuda", lambda: None)
    monkeypatch.setattr(bench, "_batch_size", lambda launch, sync: 1)
    seen: dict[str, Any] = {}

    class Run:
        stream = SimpleNamespace(ptr=1234)
        launches = 0

        def launch(self) -> None:
            Run.launches += 1

        def synchronize(self) -> None:
            pass

    class FakeEngine:
        def __init__(self) -> None:
            self.inputs = [SimpleNamespace(name="input", dtype="float16")]

        def prepare(self, feeds: dict[str, Any]) -> Run:
            seen.update(feeds)
            return Run()

    stats = bench.time_engine(FakeEngine(), {"input": (1, 3, 8, 8)}, warmup=2, iters=30)
    assert stats.iters == 30 and Run.launches == 32
    assert seen["input"].shape == (1, 3, 8, 8) and str(seen["input"].dtype) == "float16"


def test_profile_shapes_dedupes() -> None:
    p = Profile().add("x", (1, 8), (1, 8), (1, 16))
    assert bench._profile_shapes([p, p]) == [{"x": (1, 8)}, {"x": (1, 16)}]


def test_source_model_must_exist_and_match(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    info = SimpleNamespace(source_path=str(model), source_sha256=hashlib.sha256(b"model").hexdigest())
    assert bench._source_model(tmp_path / "m.engine", info, None, _sha) == str(model)
    with pytest.raises(DynashapeError, match="not the model this engine was built from"):
        bench._source_model(tmp_path / "m.engine", SimpleNamespace(source_path=str(model), source_sha256="0"),
                            None, _sha)
    with pytest.raises(DynashapeError, match="pass --model"):
        bench._source_model(tmp_path / "m.engine", None, None, _sha)
    with pytest.raises(DynashapeError, match="source model not found"):
        bench._source_model(tmp_path / "m.engine", None, tmp_path / "gone.onnx", _sha)


def _sha(path: Any) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_torch_worker_in_another_python() -> None:
    shapes = [{"input": (1, 3, 32, 32)}, {"input": (1, 3, 64, 64)}]
    try:
        stats = bench.bench_torch_subprocess(
            sys.executable, "dynashape.demo.model:build", shapes, warmup=1, iters=20, budget_s=0.1
        )
    except DynashapeError as exc:  # no GPU (or no torch) for that interpreter: said in one line
        assert str(exc).startswith(f"PyTorch eager with {sys.executable}: ")
        assert "CUDA" in str(exc) or "torch" in str(exc)
    else:
        assert len(stats) == 2 and all(s.median_ms > 0 for s in stats)


def test_torch_worker_with_a_missing_python() -> None:
    with pytest.raises(DynashapeError, match="cannot run PyTorch eager"):
        bench.bench_torch_subprocess("/nonexistent/python3", "x:y", [{"input": (1,)}])


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_bench_dynamic_against_static(tmp_path: Path) -> None:
    from dynashape.engine import build_engine
    from dynashape.model import save_model

    model_path = save_model(conv_model(), tmp_path / "conv.onnx")
    prof = Profile().add("input", (1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128))
    built = build_engine(model_path, [prof])
    engine_path = built.save(tmp_path / "conv.engine")
    shapes = [{"input": (1, 3, 32, 32)}, {"input": (2, 3, 128, 96)}]
    res = bench.run_bench(engine_path, shapes, static=True, warmup=2, iters=30, budget_s=0.5)
    assert [r.shapes for r in res.rows] == shapes
    for row in res.rows:
        assert row.dynamic is not None and row.dynamic.median_ms > 0
        assert row.static is not None and row.static_build_s is not None and row.dynamic_vs_static
        assert not row.errors
    assert res.precision == "fp32"
    default = bench.run_bench(engine_path, None, warmup=1, iters=20, budget_s=0.2)
    assert [r.shapes["input"] for r in default.rows] == [(1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128)]
    with pytest.raises(DynashapeError, match="outside every optimization profile"):
        bench.run_bench(engine_path, [{"input": (4, 3, 32, 32)}])
