"""Bench: statistics, result types, timing plumbing and the torch worker on CPU; real runs on GPU."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from trt_fixtures import conv_model, skip_gpu_tests_without_trt  # noqa: F401

from dynashape.errors import DynashapeError
from dynashape.shapes import Profile
from dynashape.trt import bench
from dynashape.trt.bench import BenchResult, LatencyStats, ShapeResult


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
    monkeypatch.setattr(bench, "_cuda_events", lambda: None)
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
    monkeypatch.setattr(bench, "_cuda_events", lambda: None)
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
    monkeypatch.setattr(bench, "_cuda_events", lambda: None)
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
    from dynashape.model import save_model
    from dynashape.trt.engine import build_engine

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


# --------------------------------------------------------------------------- end-to-end infer rows (CPU)


def _infer(numpy_ms: float, device_ms: float, bound_ms: float, first_ms: float, *,
           pinned_ms: float | None = None, call_ms: float | None = None,
           switch_ms: float | None = None) -> bench.InferTiming:
    def opt(ms: float | None) -> bench.LatencyStats | None:
        return _stats(ms) if ms is not None else None

    return bench.InferTiming(
        first_call_ms=first_ms, numpy=_stats(numpy_ms), device=_stats(device_ms),
        device_pipelined=_stats(device_ms * 0.5), copy_bound_ms=bound_ms, h2d_bytes=100, d2h_bytes=50,
        numpy_pinned=opt(pinned_ms), engine_call=opt(call_ms), switch=opt(switch_ms),
    )


def test_infer_ratios_and_json() -> None:
    timing = _infer(1.5, 0.55, 0.5, 3.0, pinned_ms=1.2, call_ms=0.6, switch_ms=2.0)
    row = ShapeResult({"input": (1, 3, 8, 8)}, dynamic=_stats(0.5), infer=timing)
    assert row.device_vs_engine == pytest.approx(0.55 / 0.6)  # like for like: both host wall time
    assert row.pipelined_vs_engine == pytest.approx(0.55)
    assert row.numpy_vs_bound == pytest.approx(1.2)  # pinned 1.2 / (0.5 copy bound + 0.5 engine)
    assert row.pageable_vs_bound == pytest.approx(1.5)
    assert row.first_vs_steady == pytest.approx(2.0)
    assert row.first_vs_switch == pytest.approx(1.5)
    data = row.to_json()
    assert data["infer"]["copy_bound_ms"] == 0.5 and data["infer"]["h2d_bytes"] == 100
    assert data["numpy_vs_bound"] == pytest.approx(1.2) and data["pageable_vs_bound"] == pytest.approx(1.5)
    assert data["infer"]["engine_call"]["median_ms"] == 0.6 and data["first_vs_switch"] == pytest.approx(1.5)
    # without the engine call timed, the device ratio falls back to the CUDA-event time
    older = ShapeResult({"input": (1, 3, 8, 8)}, dynamic=_stats(0.5), infer=_infer(1.5, 0.55, 0.5, 3.0))
    assert older.device_vs_engine == pytest.approx(1.1)
    assert older.numpy_vs_bound is None and older.first_vs_switch is None
    assert older.to_json()["infer"]["switch"] is None
    bare = ShapeResult({"input": (1,)}, dynamic=_stats(1.0))
    assert bare.device_vs_engine is None and bare.numpy_vs_bound is None and bare.first_vs_steady is None
    assert older.fresh_vs_steady is None and older.fresh_vs_trt is None and older.pageable_vs_own_bound is None


def test_first_calls_at_new_shapes_against_steady_and_tensorrt_s_own_switch() -> None:
    timing = _infer(1.5, 0.55, 0.5, 3.0, pinned_ms=1.2, call_ms=0.6, switch_ms=2.0)
    timing.fresh = LatencyStats.from_samples([2.0, 2.4, 4.5, 2.2, 2.1], "wall")
    timing.engine_switch = _stats(1.1)  # TensorRT adds 0.5 ms to a call after a change of shape
    timing.pageable_h2d_ms, timing.d2h_bound_ms = 0.7, 0.05
    row = ShapeResult({"input": (1, 3, 8, 8)}, dynamic=_stats(0.25), infer=timing)
    assert row.fresh_vs_steady == pytest.approx(4.5 / 1.5)  # the slowest first call counts
    assert row.fresh_vs_trt == pytest.approx(4.5 / (1.5 + 0.5))
    assert row.pageable_vs_own_bound == pytest.approx(1.5 / (0.7 + 0.05 + 0.25))
    timing.engine_switch = _stats(0.5)  # faster than the steady call (noise): TensorRT adds nothing
    assert row.fresh_vs_trt == pytest.approx(4.5 / 1.5)
    # with steady calls timed on a new input array each, first calls are compared with those
    timing.numpy_new, timing.engine_switch = _stats(2.0), _stats(1.1)
    assert row.fresh_vs_steady == pytest.approx(4.5 / 2.0) and row.first_vs_steady == pytest.approx(3.0 / 2.0)
    assert row.fresh_vs_trt == pytest.approx(4.5 / (2.0 + 0.5))
    data = row.to_json()
    assert data["fresh_vs_trt"] == pytest.approx(1.8) and data["infer"]["fresh"]["iters"] == 5
    assert data["infer"]["engine_switch"]["median_ms"] == 1.1 and data["infer"]["pageable_h2d_ms"] == 0.7
    assert data["infer"]["numpy_new"]["median_ms"] == 2.0


def test_fresh_shapes_are_new_and_inside_the_profile() -> None:
    prof = Profile()
    prof.add("input", (1, 3, 8, 8), (1, 3, 16, 16), (2, 3, 32, 40))
    one = SimpleNamespace(inputs=[SimpleNamespace(name="input", shape=(-1, 3, -1, -1))], profiles=[prof],
                          select_profile=lambda shapes: 0)
    ran = {((1, 3, 16, 16),), ((1, 3, 16, 24),)}
    got = [s["input"] for s in bench.fresh_shapes(one, {"input": (1, 3, 16, 16)}, ran, count=4, step=8)]
    # up the last dynamic axis, skipping a shape that ran, to the profile's max; then down
    assert got == [(1, 3, 16, 32), (1, 3, 16, 40), (1, 3, 16, 8)]
    assert bench.fresh_shapes(one, {"input": (1, 3, 16, 16)}, set(), count=2) == [
        {"input": (1, 3, 16, 24)}, {"input": (1, 3, 16, 32)}]
    two = SimpleNamespace(inputs=[*one.inputs, SimpleNamespace(name="mask", shape=(-1, -1))], profiles=[prof],
                          select_profile=lambda shapes: 0)
    assert bench.fresh_shapes(two, {"input": (1, 3, 16, 16), "mask": (1, 16)}, set()) == []
    static = SimpleNamespace(inputs=[SimpleNamespace(name="input", shape=(1, 3, 16, 16))], profiles=[prof],
                             select_profile=lambda shapes: 0)
    assert bench.fresh_shapes(static, {"input": (1, 3, 16, 16)}, set()) == []


class FakeEvent:
    """cudart.Event on a fake device: each recorded event reads the fake clock."""

    clock = 0.0

    def __init__(self) -> None:
        self.at = 0.0
        self.streams: list[int] = []

    def record(self, stream: int) -> None:
        self.at = FakeEvent.clock
        self.streams.append(stream)

    def synchronize(self) -> None:
        pass

    def elapsed_ms(self, start: FakeEvent) -> float:
        return self.at - start.at

    def free(self) -> None:
        pass


def test_pageable_copy_is_timed_with_events_one_copy_per_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from dynashape.trt import cudart

    copies: list[tuple[int, int]] = []

    def copy_htod(dst: int, src: Any, nbytes: int, stream: Any) -> None:
        copies.append((nbytes, stream.ptr))
        FakeEvent.clock += nbytes / 1000  # 1 ms per kB on the fake device

    freed: list[bool] = []
    buffer = SimpleNamespace(ptr=5, free=lambda: freed.append(True))
    monkeypatch.setattr(bench, "_cuda_events", lambda: SimpleNamespace(Event=FakeEvent))
    monkeypatch.setattr(cudart, "DeviceBuffer", lambda nbytes: buffer)
    monkeypatch.setattr(cudart, "copy_htod", copy_htod)
    engine = SimpleNamespace(stream=SimpleNamespace(ptr=9, synchronize=lambda: None))
    feeds = {"a": np.zeros(500, np.uint8), "b": np.zeros(250, np.uint8), "empty": np.zeros(0, np.uint8)}
    assert bench._pageable_h2d_ms(engine, feeds, repeats=20) == pytest.approx(0.75)
    assert len(copies) == 2 * (2 + 20) and {s for _n, s in copies} == {9} and freed == [True]
    monkeypatch.setattr(bench, "_cuda_events", lambda: None)
    assert bench._pageable_h2d_ms(engine, feeds) is None


def test_sample_uses_cuda_events_on_the_engine_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeEvent] = []

    def event() -> FakeEvent:
        made.append(FakeEvent())
        return made[-1]

    monkeypatch.setattr(bench, "_cuda_events", lambda: SimpleNamespace(Event=event))

    def launch() -> None:
        FakeEvent.clock += 0.25

    s = bench._sample(launch, lambda: None, warmup=1, iters=25, budget_s=1.0, stream_ptr=77)
    assert s.method == "cuda-events" and s.iters == 25 and s.median_ms == pytest.approx(0.25)
    assert made and all(set(e.streams) == {77} for e in made)
    # events=False (pipelined calls) falls back to wall time even with events available
    monkeypatch.setattr(bench, "_batch_size", lambda launch, sync: 1)
    s = bench._sample(launch, lambda: None, warmup=0, iters=20, budget_s=0.0, stream_ptr=77, events=False)
    assert s.method == "wall-sync"


def test_sample_calls_counts_calls() -> None:
    calls = []
    s = bench._sample_calls(lambda: calls.append(1), warmup=4, iters=30, budget_s=5.0)
    assert s.method == "wall" and s.iters == 30 and len(calls) == 34


# --------------------------------------------------------------------------- CLI: run/bench options (CPU)


def test_bench_cli_passes_cuda_graph_and_infer(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    from dynashape import cli

    seen: dict[str, Any] = {}

    def fake_run_bench(engine: Any, shapes: Any, **kwargs: Any) -> BenchResult:
        seen.update(kwargs)
        row = ShapeResult({"input": (1, 3, 8, 8)}, dynamic=_stats(0.5),
                          infer=_infer(1.5, 0.55, 0.5, 3.0, pinned_ms=0.9, call_ms=0.5, switch_ms=2.5)
                          if kwargs["infer"] else None)
        return BenchResult("m.engine", "fp32", "Fake GPU", "8.5.3.1", [row], cuda_graph=kwargs["cuda_graph"],
                           warmup_s=0.25, h2d_gbps=50.0, d2h_gbps=40.0)

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    engine = str(tmp_path / "m.engine")
    assert cli.main(["bench", engine, "--cuda-graph"]) == 0
    out = capsys.readouterr().out
    assert seen["cuda_graph"] is True and seen["infer"] is True
    assert "CUDA graphs" in out and "end-to-end infer" in out and "50.0 GB/s" in out and "1.10x" in out
    assert "0.90x" in out and "2.00x" in out  # pinned/(copy+engine), first/steady
    assert cli.main(["bench", engine, "--no-infer"]) == 0
    out = capsys.readouterr().out
    assert seen["cuda_graph"] is False and seen["infer"] is False and "end-to-end infer" not in out


class FakeRunEngine:
    """Engine.load stand-in for `run`: records the options and counts calls."""

    loaded: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        from dynashape.trt.engine import TensorInfo

        self.inputs = [TensorInfo("input", "float32", (-1, 3, -1, -1), True)]
        self.input_names = ["input"]
        self.profiles = [Profile().add("input", (1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 64, 64))]
        self.graphs = SimpleNamespace(failed={})
        self.calls = 0
        self.warmed = False

    def select_profile(self, shapes: Any) -> int:
        return 0

    def warmup(self, shapes: Any = None) -> float:
        self.warmed = True
        return 0.5

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {"output": feeds["input"] * 2}

    def __enter__(self) -> FakeRunEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_run_cli_reports_first_call_and_steady(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from dynashape import cli
    from dynashape.trt.engine import Engine

    made: list[FakeRunEngine] = []

    def load(cls: Any, path: str, **kwargs: Any) -> FakeRunEngine:
        FakeRunEngine.loaded.update(kwargs)
        made.append(FakeRunEngine())
        return made[-1]

    monkeypatch.setattr(Engine, "load", classmethod(load))
    assert cli.main(["run", "m.engine", "--cuda-graph", "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert FakeRunEngine.loaded == {"cuda_graph": True}
    assert made[-1].calls == 4 and made[-1].warmed
    assert "warm-up 0.50 s" in out and "first call" in out and "median of 3" in out and "CUDA graph" in out
    assert cli.main(["run", "m.engine", "--no-warmup", "--repeat", "0"]) == 0
    out = capsys.readouterr().out
    assert made[-1].calls == 1 and not made[-1].warmed and "no warm-up" in out and "median" not in out
    assert cli.main(["run", "m.engine", "--repeat", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--repeat -1" in err and "Traceback" not in err


def test_warmed_neighbour_is_another_shape_warmup_ran() -> None:
    from types import SimpleNamespace

    prof = Profile()
    prof.add("input", (1, 3, 8, 8), (1, 3, 16, 16), (2, 3, 32, 32))
    fixed = Profile()
    fixed.add("input", (1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 4, 4))
    eng = SimpleNamespace(profiles=[prof, fixed],
                          select_profile=lambda shapes: 1 if shapes["input"] == (1, 3, 4, 4) else 0)
    assert bench.warmed_neighbour(eng, {"input": (1, 3, 12, 12)}) == {"input": (1, 3, 16, 16)}  # opt
    assert bench.warmed_neighbour(eng, {"input": (1, 3, 16, 16)}) == {"input": (1, 3, 8, 8)}  # not itself: min
    assert bench.warmed_neighbour(eng, {"input": (1, 3, 4, 4)}) is None  # a one-shape profile has none


def test_the_infer_tables_fit_80_columns_without_cutting_a_number() -> None:
    import io

    from rich.console import Console

    from dynashape.cli.engine import _infer_table

    timing = _infer(12.345, 10.5, 10.25, 99.875, pinned_ms=11.125, call_ms=10.375, switch_ms=20.5)
    timing.fresh = LatencyStats.from_samples([123.25, 101.5], "wall")
    timing.engine_switch, timing.pageable_h2d_ms, timing.d2h_bound_ms = _stats(10.75), 1.5, 0.25
    timing.numpy_new = _stats(14.5)
    rows = [ShapeResult({"input": (4, 3, 1024, 2048)}, dynamic=_stats(10.125), infer=timing)]
    result = BenchResult(engine="e", precision="fp32", device="gpu", tensorrt_version="8.5", rows=rows,
                         warmup_s=1.5, h2d_gbps=55.0, d2h_gbps=50.0)
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    for table in _infer_table(result):
        console.print(table)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for value in ("4x3x1024x2048", "10.1", "10.4", "12.3", "14.5", "11.1", "99.9", "123",
                  "1.01x", "1.04x", "6.89x", "8.50x", "8.29x", "new/trt"):
        assert value in text, value


@pytest.mark.parametrize(("ms", "text"), [(0.0814, "0.081"), (0.9996, "1.00"), (5.125, "5.12"), (99.96, "100"),
                                          (12.34, "12.3"), (1234.5, "1234"), (None, "-")])
def test_short_milliseconds(ms: float | None, text: str) -> None:
    from dynashape.cli.engine import short_ms

    assert short_ms(ms) == text
