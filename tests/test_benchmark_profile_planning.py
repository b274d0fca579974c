"""benchmarks/profile_planning.py's plumbing, on a fake GPU: the real run needs TensorRT and costs
scarce GPU time, so a crash in its bookkeeping must show up here first."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dynashape.demo import demo_onnx_path
from dynashape.shapes import Profile, ShapeMap
from dynashape.trt.engine import select_profile
from dynashape.trt.planning import BuildRecord, log_distance

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_planning.py"


def load_benchmark() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("profile_planning_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def fake_ms(profiles: Sequence[Profile], shapes: ShapeMap, profile: int | None) -> float:
    """Volume, 30% slower in the whole range than in a profile with opt at the shape."""
    volume = float(sum(math.prod(s) for s in shapes.values()))
    if not profiles:  # a static engine
        return volume * 1e-6
    prof = profiles[profile if profile is not None else select_profile(profiles, shapes)]
    opt = {n: p.opt for n, p in prof}
    return volume * 1e-6 * (1.0 + 0.1 * log_distance(shapes, opt) + (0.0 if len(profiles) == 1 else 0.01))


class FakeInfo:
    def __init__(self, profiles: Sequence[Profile]) -> None:
        self.profiles = list(profiles)
        self.plan: Any = None
        self.gpu_name, self.tensorrt_version = "Fake GPU", "0.0"


class FakeBuilt:
    def __init__(self, profiles: Sequence[Profile], static: bool = False) -> None:
        self.data = b"x" * (100 * len(profiles))
        self.info = FakeInfo([] if static else profiles)


class FakeEngine:
    def __init__(self, data: bytes, info: FakeInfo, where: str = "") -> None:
        self.info = info

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def select_profile(self, shapes: ShapeMap) -> int:
        return select_profile(self.info.profiles, shapes, self.info.plan) if self.info.profiles else 0


class FakeMeasurer:
    """TrtMeasurer's interface; counts builds, keeps engines, records them like the real one."""

    def __init__(self, model: Any, **kwargs: Any) -> None:
        self.builds: list[BuildRecord] = []
        self.final_engine: Any = None
        self._engines: dict[str, FakeBuilt] = {}

    def _build(self, key: str, profiles: Sequence[Profile], kind: str, static: bool = False) -> FakeBuilt:
        if key not in self._engines:
            self._engines[key] = FakeBuilt(profiles, static)
            self.builds.append(BuildRecord(kind, key, 1.0, 100))
        return self._engines[key]

    def static_ms(self, shapes: ShapeMap) -> float | None:
        self._build(f"static {shapes}", [], "static", static=True)
        return fake_ms([], shapes, None)

    def profile_ms(self, profile: Profile, probes: Sequence[ShapeMap]) -> dict[str, float]:
        from dynashape.trt.planning import shape_key

        self._build(str(profile), [profile], "candidate")
        return {shape_key(p): fake_ms([profile], p, 0) for p in probes}

    def final(self, profiles: Sequence[Profile], points: Sequence[ShapeMap]) -> list[dict[int, float]]:
        self.final_engine = FakeBuilt(profiles)
        self.builds.append(BuildRecord("final", "final", 2.0, 400))
        return [{i: fake_ms(profiles, p, i) for i, prof in enumerate(profiles) if prof.contains(p)} for p in points]

    def static_engine(self, shapes: ShapeMap) -> FakeBuilt:
        return self._build(f"static {shapes}", [], "rebuild", static=True)

    def profile_engine(self, profile: Profile) -> FakeBuilt:
        return self._build(str(profile), [profile], "rebuild")


def test_the_benchmark_plans_times_side_by_side_and_reports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_benchmark()
    timed: list[tuple[int, ShapeMap]] = []

    def fake_time(engine: FakeEngine, shapes: ShapeMap, **kwargs: Any) -> Any:
        timed.append((id(engine), shapes))
        return types.SimpleNamespace(median_ms=fake_ms(engine.info.profiles, shapes, kwargs.get("profile")))

    monkeypatch.setattr(bench, "TrtMeasurer", FakeMeasurer)
    monkeypatch.setattr(bench, "Engine", FakeEngine)
    monkeypatch.setattr(bench, "time_engine", fake_time)
    out = tmp_path / "pp.json"
    assert bench.main(["--model", f"demo={demo_onnx_path()}", "--precisions", "fp16",
                       "--state", str(tmp_path / "state"), "--json", str(out), "--rounds", "2"]) == 0
    (res,) = json.loads(out.read_text())
    assert len(res["profiles"]) > 1 and res["profiles"][0] == str(bench.Profile().add("input", *bench.RANGE))
    shapes = [r["shape"] for r in res["rows"]]
    assert shapes[:5] == ["1x3x256x256", "1x3x512x512", "1x3x1024x1024", "1x3x1024x2048", "4x3x512x512"]
    assert len(shapes) == 7 and not any(r["probe"] for r in res["rows"][5:])  # two shapes between opts
    for row in res["rows"]:  # the table's ratios are its own side-by-side times
        assert row["planned_ratio"] == pytest.approx(row["planned_ms"] / row["static_ms"])
        assert row["one_profile_ratio"] == pytest.approx(row["one_profile_ms"] / row["static_ms"])
    assert max(r["planned_ratio"] for r in res["rows"]) < max(r["one_profile_ratio"] for r in res["rows"])
    # three engines per shape, two rounds each, and no engine built again for the table
    assert len(timed) == 3 * 2 * 7
    assert res["rebuild_s"] == 0
    assert res["one_profile_build_s"] == 1.0 and res["planned_final_build_s"] == 2.0
    text = capsys.readouterr().out
    assert "==== summary ====" in text and "1x3x1024x2048" in text and "planned engine" in text
    # a second run reads the finished result instead of measuring again
    timed.clear()
    assert bench.main(["--model", f"demo={demo_onnx_path()}", "--precisions", "fp16",
                       "--state", str(tmp_path / "state")]) == 0
    assert timed == []
