"""Profile planning: the measured search on a fake GPU, the split, the runtime choice, the sidecar."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from trt_fixtures import conv_model, skip_gpu_tests_without_trt  # noqa: F401  (skips gpu tests without TensorRT)

from dynashape.errors import DynashapeError
from dynashape.shapes import Profile, ShapeMap
from dynashape.trt import bench, planning
from dynashape.trt.engine import EngineInfo, TensorInfo, select_profile
from dynashape.trt.planning import Measured, ProfilePlan, plan_profiles, probe_cell, shape_key

RANGE = Profile().add("input", (1, 3, 256, 256), (1, 3, 512, 512), (4, 3, 1024, 2048))
BENCH = [{"input": s} for s in [(1, 3, 256, 256), (1, 3, 512, 512), (1, 3, 1024, 1024),
                                (4, 3, 512, 512), (1, 3, 1024, 2048)]]
MULTIPLES = {("input", 2): 32, ("input", 3): 32}


def volume(shapes: ShapeMap) -> float:
    return float(sum(math.prod(s) for s in shapes.values()))


class FakeGpu:
    """Latency = volume x a penalty that grows with the profile's width and the distance to opt
    (the shape of what TensorRT does, not its numbers). Counts every build."""

    def __init__(self, width_cost: float = 0.01, distance_cost: float = 0.04) -> None:
        self.width_cost = width_cost
        self.distance_cost = distance_cost
        self.static_builds: list[str] = []
        self.profile_builds: list[str] = []
        self.finals: list[list[Profile]] = []

    def ms(self, profile: Profile, shapes: ShapeMap) -> float:
        width = sum(math.log(b / a) for _, p in profile for a, b in zip(p.min, p.max, strict=True))
        opt = {n: p.opt for n, p in profile}
        return volume(shapes) * 1e-6 * (
            1 + self.width_cost * width + self.distance_cost * planning.log_distance(shapes, opt)
        )

    def static_ms(self, shapes: ShapeMap) -> float | None:
        self.static_builds.append(shape_key(shapes))
        return volume(shapes) * 1e-6

    def profile_ms(self, profile: Profile, probes: Sequence[ShapeMap]) -> dict[str, float]:
        self.profile_builds.append(planning.profile_key(profile))
        assert all(profile.contains(p) for p in probes)
        return {shape_key(p): self.ms(profile, p) for p in probes}

    def final(self, profiles: Sequence[Profile], points: Sequence[ShapeMap]) -> list[dict[int, float]]:
        self.finals.append(list(profiles))
        return [{i: self.ms(p, pt) for i, p in enumerate(profiles) if p.contains(pt)} for pt in points]


def test_a_flat_cost_keeps_one_profile() -> None:
    gpu = FakeGpu(width_cost=0.0, distance_cost=0.0)
    plan = plan_profiles(RANGE, gpu, probes=BENCH, multiples=MULTIPLES)
    assert plan.profiles == [RANGE]
    assert plan.stopped.startswith("every probe within 1.05x")
    assert all(p.ratio == pytest.approx(1.0) for p in plan.probes)
    assert len(gpu.finals) == 1 and len(gpu.profile_builds) == 1


def test_the_search_adds_profiles_until_the_target_and_never_makes_a_probe_slower() -> None:
    gpu = FakeGpu()
    one = plan_profiles(RANGE, FakeGpu(), probes=BENCH, max_profiles=1, multiples=MULTIPLES)
    plan = plan_profiles(RANGE, gpu, probes=BENCH, max_profiles=8, target=1.05, multiples=MULTIPLES)
    assert one.worst_ratio is not None and one.worst_ratio > 1.1  # one wide profile is slow here
    assert plan.worst_ratio is not None and plan.worst_ratio <= 1.05, plan.to_json()["points"]
    assert plan.profiles[0] == RANGE and 1 < len(plan.profiles) <= 8  # the range stays, covered
    # each static probe engine and each candidate profile is built once
    assert sorted(gpu.static_builds) == sorted(shape_key(s) for s in BENCH)
    assert len(gpu.profile_builds) == len(set(gpu.profile_builds)) == len(plan.profiles)
    # every step but the last one added a profile, and no probe ever got slower
    assert [s.action.startswith("stop") for s in plan.steps] == [False] * (len(plan.steps) - 1) + [True]
    for before, after in itertools.pairwise(plan.steps):
        for key, ratio in after.ratios.items():
            assert ratio is not None and before.ratios[key] is not None and ratio <= before.ratios[key] + 1e-12
    by_probe = {shape_key(p.shapes): p for p in plan.probes}
    for probe in one.probes:  # the final engine, measured: every probe at least as fast as in one profile
        assert by_probe[shape_key(probe.shapes)].best_ms <= probe.best_ms + 1e-12


def test_the_search_stops_at_n_profiles_and_says_so() -> None:
    plan = plan_profiles(RANGE, FakeGpu(), probes=BENCH, max_profiles=2, target=1.0, multiples=MULTIPLES)
    assert len(plan.profiles) == 2
    assert "reached 2 profile(s)" in plan.stopped
    assert plan.profiles[0] == RANGE


def test_the_search_stops_when_every_slow_probe_has_a_profile() -> None:
    class Stubborn(FakeGpu):  # narrow profiles do not help: every probe stays 20% slower
        def ms(self, profile: Profile, shapes: ShapeMap) -> float:
            return volume(shapes) * 1.2e-6

    for cap in (10, None):  # None, the default: no cap but this one
        plan = plan_profiles(RANGE, Stubborn(), probes=BENCH, max_profiles=cap, target=1.05, multiples=MULTIPLES)
        assert len(plan.profiles) == 1 + len(BENCH)
        assert plan.stopped.startswith("every slow probe has a profile of its own")
        assert ProfilePlan.from_json(plan.to_json()).max_profiles == cap


def test_a_final_engine_slower_than_its_candidates_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    class Unlucky(FakeGpu):  # the engine with every profile got slower kernels at 256x256
        def final(self, profiles: Sequence[Profile], points: Sequence[ShapeMap]) -> list[dict[int, float]]:
            out = super().final(profiles, points)
            return [{i: ms * (1.2 if pt == BENCH[0] else 1.0) for i, ms in row.items()}
                    for pt, row in zip(points, out, strict=True)]

    flat = {"width_cost": 0.0, "distance_cost": 0.0}
    plan = plan_profiles(RANGE, Unlucky(**flat), probes=BENCH, multiples=MULTIPLES)
    assert plan.stopped == ("every probe within 1.05x of static; "
                            "but the final engine measured above 1.05x at input:1x3x256x256 1.20x")
    assert "TensorRT picks kernels anew in each build" in caplog.text
    assert plan_profiles(RANGE, FakeGpu(**flat), probes=BENCH, multiples=MULTIPLES).stopped == (
        "every probe within 1.05x of static")
    # a probe the search already knew to be slow is in the stop reason already, not listed again
    capped = plan_profiles(RANGE, Unlucky(), probes=BENCH, max_profiles=1, multiples=MULTIPLES)
    assert capped.stopped.startswith("reached 1 profile(s)") and "final engine" not in capped.stopped


def test_overlaps_are_timed_in_both_profiles() -> None:
    plan = plan_profiles(RANGE, FakeGpu(), probes=BENCH, max_profiles=3, target=1.0, multiples=MULTIPLES)
    extra = [p for p in plan.points if not p.is_probe]
    assert extra, "two profiles that share a region get a measured point there"
    for point in extra:
        assert len(point.profile_ms) >= 2
        assert point.static_ms is None and point.ratio is None


def test_default_probes_are_range_ends_opt_and_midpoints_on_the_lattice() -> None:
    probes = planning.default_probes(RANGE, MULTIPLES)
    shapes = [p["input"] for p in probes]
    assert shapes[0] == (1, 3, 256, 256) and shapes[2] == (1, 3, 512, 512) and shapes[-1] == (4, 3, 1024, 2048)
    assert shapes[1] == (1, 3, 352, 352)  # sqrt(256*512) = 362 -> nearest multiple of 32
    assert all(s[2] % 32 == 0 and s[3] % 32 == 0 for s in shapes)


def test_a_probe_cell_reaches_halfway_to_the_neighbouring_probes() -> None:
    cell = probe_cell(RANGE, BENCH, {"input": (1, 3, 1024, 2048)}, MULTIPLES).inputs["input"]
    # batch: 1 is the smallest probe batch -> from the range's 1; halfway to 4 -> sqrt(4) = 2
    # height: halfway down to 512 -> sqrt(512*1024) = 724 -> 736 on the lattice; up to the range's 1024
    # width: halfway down to 1024 -> 1448 -> 1440; 2048 is the range's end
    assert (cell.min, cell.opt, cell.max) == ((1, 3, 736, 1440), (1, 3, 1024, 2048), (2, 3, 1024, 2048))
    middle = probe_cell(RANGE, BENCH, {"input": (1, 3, 512, 512)}, MULTIPLES).inputs["input"]
    assert middle.min == (1, 3, 352, 352) and middle.max == (2, 3, 736, 736)  # sqrt(256*512), sqrt(512*1024)
    # every cell lies inside the range and holds its probe as opt
    for probe in BENCH:
        c = probe_cell(RANGE, BENCH, probe, MULTIPLES)
        assert c.inputs["input"].opt == probe["input"] and RANGE.contains({"input": c.inputs["input"].max})
        assert RANGE.contains({"input": c.inputs["input"].min})


def test_bad_arguments() -> None:
    with pytest.raises(DynashapeError, match="outside the range"):
        plan_profiles(RANGE, FakeGpu(), probes=[{"input": (8, 3, 256, 256)}])
    with pytest.raises(DynashapeError, match="N >= 1"):
        plan_profiles(RANGE, FakeGpu(), max_profiles=0)
    with pytest.raises(DynashapeError, match=r">= 1\.0"):
        plan_profiles(RANGE, FakeGpu(), target=0.9)

    class NoStatic(FakeGpu):
        def static_ms(self, shapes: ShapeMap) -> float | None:
            return None

    with pytest.raises(DynashapeError, match="no static engine"):
        plan_profiles(RANGE, NoStatic(), probes=BENCH)


def _two_overlapping() -> tuple[list[Profile], ProfilePlan]:
    small = Profile().add("x", (1, 8), (1, 16), (1, 64))
    large = Profile().add("x", (1, 32), (1, 128), (1, 256))
    points = [
        Measured({"x": (1, 40)}, {0: 1.0, 1: 2.0}, is_probe=False),  # small is faster here
        Measured({"x": (1, 60)}, {0: 3.0, 1: 2.5}, is_probe=False),  # large is faster here
        Measured({"x": (1, 128)}, {1: 1.0}, static_ms=0.9),
    ]
    return [small, large], ProfilePlan([small, large], points, 1.05, 2, "test")


def test_runtime_choice_follows_the_nearest_measurement() -> None:
    profiles, plan = _two_overlapping()
    assert select_profile(profiles, {"x": (1, 36)}, plan) == 0
    assert select_profile(profiles, {"x": (1, 58)}, plan) == 1
    # at 48 the nearest opt is the large profile's (log 128/48 = 0.98 < log 48/16 = 1.10), but the
    # nearest measurement (40) says the small one is faster
    assert select_profile(profiles, {"x": (1, 48)}, None) == 1
    assert select_profile(profiles, {"x": (1, 48)}, plan) == 0
    # a shape in one profile only never consults the plan
    assert select_profile(profiles, {"x": (1, 10)}, plan) == 0
    assert select_profile(profiles, {"x": (1, 200)}, plan) == 1


def test_plan_round_trips_through_the_sidecar(tmp_path: Path) -> None:
    profiles, plan = _two_overlapping()
    plan.builds.append(planning.BuildRecord("final", "2 profile(s)", 12.5, 1000))
    info = EngineInfo(
        tensorrt_version="8.5.3.1", gpu_name="H100", compute_capability="9.0", profiles=profiles,
        inputs=[TensorInfo("x", "float32", (1, -1), True)], outputs=[TensorInfo("y", "float32", (1, -1), False)],
        source_sha256="0" * 64, plan=plan,
    )
    data = json.loads(json.dumps(info.to_json()))
    assert data["plan"]["points"][0]["best_profile"] == 0
    assert data["plan"]["build_seconds"]["final"] == 12.5
    back = EngineInfo.from_json(data)
    assert back.plan is not None
    assert [p.profile_ms for p in back.plan.points] == [p.profile_ms for p in plan.points]
    assert back.plan.choose([0, 1], {"x": (1, 48)}) == 0
    no_plan = EngineInfo.from_json({**data, "plan": None})
    assert no_plan.plan is None


def test_cache_paths_are_per_model_and_per_tensorrt_and_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DYNASHAPE_CACHE_DIR", str(tmp_path))
    a = planning.default_timing_cache("ab" * 32, "8.5.3.1", "9.0")
    b = planning.default_timing_cache("cd" * 32, "8.5.3.1", "9.0")
    c = planning.default_timing_cache("ab" * 32, "10.0.1", "9.0")
    assert a.parent == tmp_path / ("ab" * 8) and a.name == "timing-trt8.5.3.1-sm9.0.cache"
    assert len({a, b, c}) == 3
    monkeypatch.delenv("DYNASHAPE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert planning.default_cache_dir("ef" * 32) == tmp_path / "xdg" / "dynashape" / ("ef" * 8)


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_planning_on_tensorrt_builds_each_engine_once_and_runs_correctly(tmp_path: Path) -> None:
    from dynashape.backends.ort import run_model
    from dynashape.model import save_model
    from dynashape.testing import max_abs_error, random_feeds
    from dynashape.trt.engine import Engine

    model = conv_model(seed=3)
    path = save_model(model, tmp_path / "conv.onnx")
    rng = Profile().add("input", (1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 256, 256))
    probes = [{"input": s} for s in [(1, 3, 32, 32), (1, 3, 64, 64), (1, 3, 256, 256), (2, 3, 128, 128)]]
    store = tmp_path / "measurements.json"

    def measurer() -> bench.TrtMeasurer:
        return bench.TrtMeasurer(path, timing_cache=tmp_path / "timing.cache", store=store,
                                    warmup=2, iters=20, budget_s=0.2)

    first = measurer()
    # how many profiles the search adds depends on measured times; nothing below does
    plan = plan_profiles(rng, first, probes=probes, target=1.0, max_profiles=3)
    assert 1 <= len(plan.profiles) <= 3 and plan.profiles[0] == rng
    kinds = [b.kind for b in first.builds if not b.cached]
    assert kinds.count("static") == len(probes) and kinds.count("final") == 1
    assert kinds.count("candidate") == len(plan.profiles)
    assert all(p.ratio is not None and p.ratio > 0 for p in plan.probes)
    # the engines the search timed are kept, for timing side by side later: no build for them
    n_builds = len(first.builds)
    assert first.static_engine(probes[0]) is first.static_engine(probes[0])
    assert first.profile_engine(rng) is first.profile_engine(rng)
    assert len(first.builds) == n_builds

    built = first.final_engine
    built.info.plan = plan
    engine_path = built.save(tmp_path / "planned.engine")
    with Engine.load(engine_path) as eng:
        assert eng.info is not None and eng.info.plan is not None and len(eng.profiles) == len(plan.profiles)
        for shape in [(1, 3, 32, 32), (1, 3, 96, 160), (2, 3, 256, 256), (1, 3, 200, 48)]:
            feeds = random_feeds(model, {"input": shape})
            want = run_model(model, feeds)
            assert max_abs_error(eng.infer(feeds), want) < 1e-3, shape
            for i, prof in enumerate(eng.profiles):  # every profile that holds the shape is right
                if prof.contains({"input": shape}):
                    assert max_abs_error(eng.infer(feeds, profile=i), want) < 1e-3, (shape, i)

    # a second run reuses every static and candidate measurement: only the final engine is built
    second = measurer()
    again = plan_profiles(rng, second, probes=probes, target=1.0, max_profiles=3)
    assert [b.kind for b in second.builds if not b.cached] == ["final"]
    second.static_engine(probes[1])  # measured in the first run: rebuilt, and recorded as such
    assert [b.kind for b in second.builds if not b.cached] == ["final", "rebuild"]
    assert again.profiles == plan.profiles
    assert np.isfinite([p.best_ms for p in again.points]).all()
