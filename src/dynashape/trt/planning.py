"""Optimization-profile planning: profiles added where measurement says one wide profile is slow.

A profile that spans a wide range makes TensorRT pick kernels that work for every shape in it,
and those can be slower than a static engine's, even at the profile's own opt shape. How much,
and whether a narrower profile helps, depends on the model and the GPU (on the H200, cutting
lraspp's range at width 1625 made the narrower profile slower at 1024x1024 than the full range),
so the plan is measured, never guessed:

1. every probe shape gets a static engine (min = opt = max); its latency is the target to meet;
2. the plan starts as one profile over the whole range and times each probe in it;
3. while some probe is slower than ``target`` x static and fewer than ``max_profiles`` profiles
   exist, a profile is added around the slowest probe that has none of its own (``probe_cell``:
   opt at the probe, reaching halfway to the neighbouring probe sizes). Profiles are only ever
   added, so the range stays covered by the first one and no probe gets slower than before.
   ``max_profiles`` is no cap by default: the search ends anyway once every slow probe has a
   profile of its own, so there is at most one profile more than there are probes;
4. the final engine holds every profile; each probe, and the centre of every overlap, is timed
   in every profile that contains it. That table goes into the sidecar, and at run time a shape
   that fits several profiles runs in the one measured fastest at the nearest measured point.

Building is separate from measuring (``Measurer``) so the search is tested without a GPU; the
TensorRT measurer (:class:`dynashape.trt.bench.TrtMeasurer`, beside the other timings of engines)
caches every static and candidate measurement by key (in memory and on disk), so no engine is
built twice, within a run or across runs. This module imports neither TensorRT nor the engine.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dynashape.errors import DynashapeError
from dynashape.shapes import Profile, ShapeMap, format_shapes

log = logging.getLogger(__name__)

DEFAULT_TARGET = 1.05
ProgressFn = Callable[[str], None]
Axis = tuple[str, int]  # (input name, axis index)


def shape_key(shapes: ShapeMap) -> str:
    return format_shapes(dict(sorted(shapes.items())))


def profile_key(profile: Profile) -> str:
    return json.dumps(profile.to_json(), sort_keys=True)


def log_distance(a: ShapeMap, b: ShapeMap) -> float:
    """Sum over dims of |log(a/b)|: a 2x miss weighs the same on a small and a large axis."""
    total = 0.0
    for name, sa in a.items():
        for x, y in zip(sa, b[name], strict=True):
            if x > 0 and y > 0:
                total += abs(math.log(x / y))
    return total


# --------------------------------------------------------------------------- results


@dataclass
class Measured:
    """One timed point of the final engine: median ms per profile that contains it."""

    shapes: ShapeMap
    profile_ms: dict[int, float]
    static_ms: float | None = None
    is_probe: bool = True  # False: the centre of an overlap, timed only to choose a profile

    @property
    def best_profile(self) -> int | None:
        if not self.profile_ms:
            return None
        return min(self.profile_ms, key=lambda i: (self.profile_ms[i], i))

    @property
    def best_ms(self) -> float | None:
        best = self.best_profile
        return None if best is None else self.profile_ms[best]

    @property
    def ratio(self) -> float | None:
        if self.static_ms is None or self.best_ms is None or self.static_ms <= 0:
            return None
        return self.best_ms / self.static_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": shape_key(self.shapes),
            "shapes": {n: list(s) for n, s in self.shapes.items()},
            "probe": self.is_probe,
            "static_ms": self.static_ms,
            "profile_ms": {str(i): ms for i, ms in sorted(self.profile_ms.items())},
            "best_profile": self.best_profile,
            "ratio": self.ratio,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measured:
        return cls(
            shapes={n: tuple(int(d) for d in s) for n, s in data["shapes"].items()},
            profile_ms={int(i): float(ms) for i, ms in data.get("profile_ms", {}).items()},
            static_ms=None if data.get("static_ms") is None else float(data["static_ms"]),
            is_probe=bool(data.get("probe", True)),
        )


@dataclass
class BuildRecord:
    kind: str  # "static", "candidate", "final", or "rebuild" (an earlier run's engine, built again to time it)
    label: str
    seconds: float
    size: int = 0
    cached: bool = False  # measured in an earlier run: no build this time

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "seconds": round(self.seconds, 3),
                "size": self.size, "cached": self.cached}


@dataclass
class PlanStep:
    """One round of the search: the profiles it measured and what it did next."""

    profiles: list[Profile]
    ratios: dict[str, float | None]
    action: str

    def to_json(self) -> dict[str, Any]:
        return {"profiles": [p.to_json() for p in self.profiles], "ratios": self.ratios, "action": self.action}


@dataclass
class ProfilePlan:
    """The planned profiles, the final engine's measurements and how the search went."""

    profiles: list[Profile]
    points: list[Measured]
    target: float
    max_profiles: int | None  # None: no cap but the search's own
    stopped: str
    steps: list[PlanStep] = field(default_factory=list)
    builds: list[BuildRecord] = field(default_factory=list)

    @property
    def probes(self) -> list[Measured]:
        return [p for p in self.points if p.is_probe]

    @property
    def worst_ratio(self) -> float | None:
        ratios = [p.ratio for p in self.probes if p.ratio is not None]
        return max(ratios) if ratios else None

    def build_seconds(self, kind: str, *, reused: bool = False) -> float:
        """Seconds spent building engines of one kind in this run (``reused``: also the builds
        of earlier runs whose measurements this one reused)."""
        return sum(b.seconds for b in self.builds if b.kind == kind and (reused or not b.cached))

    def choose(self, candidates: Sequence[int], shapes: ShapeMap) -> int | None:
        """Among ``candidates`` (profiles that contain ``shapes``), the one measured fastest at
        the nearest measured point that at least two candidates were timed at; None if none."""
        if len(candidates) < 2:
            return candidates[0] if candidates else None
        best: tuple[float, int] | None = None
        for point in self.points:
            timed = [i for i in candidates if i in point.profile_ms]
            if len(timed) < 2 or set(point.shapes) != set(shapes):
                continue
            dist = log_distance(shapes, point.shapes)
            pick = min(timed, key=lambda i: (point.profile_ms[i], i))
            if best is None or dist < best[0] - 1e-12:
                best = (dist, pick)
        return None if best is None else best[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "max_profiles": self.max_profiles,
            "stopped": self.stopped,
            "worst_ratio": self.worst_ratio,
            "profiles": [p.to_json() for p in self.profiles],
            "points": [p.to_json() for p in self.points],
            "steps": [s.to_json() for s in self.steps],
            "builds": [b.to_json() for b in self.builds],
            "build_seconds": {
                kind: round(self.build_seconds(kind), 3) for kind in ("static", "candidate", "final")
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfilePlan:
        return cls(
            profiles=[Profile.from_json(p) for p in data["profiles"]],
            points=[Measured.from_json(p) for p in data.get("points", [])],
            target=float(data.get("target", DEFAULT_TARGET)),
            max_profiles=None if data.get("max_profiles") is None else int(data["max_profiles"]),
            stopped=str(data.get("stopped", "")),
            builds=[BuildRecord(**b) for b in data.get("builds", [])],
        )


# --------------------------------------------------------------------------- measuring


class Measurer(Protocol):
    """What the search needs from TensorRT (or from a fake, in tests)."""

    def static_ms(self, shapes: ShapeMap) -> float | None:
        """Median latency of a static engine at ``shapes``; None when it cannot be built."""

    def profile_ms(self, profile: Profile, probes: Sequence[ShapeMap]) -> dict[str, float]:
        """Median latency at each probe (by ``shape_key``) of an engine with this one profile."""

    def final(self, profiles: Sequence[Profile], points: Sequence[ShapeMap]) -> list[dict[int, float]]:
        """Build the engine with every profile; per point, ms in each profile that contains it."""


# --------------------------------------------------------------------------- the search


def default_probes(rng: Profile, multiples: Mapping[Axis, int] | None = None) -> list[ShapeMap]:
    """min, opt, max of the range and the geometric midpoints min-opt and opt-max, on the lattice."""
    picks: list[ShapeMap] = []
    lo = {n: p.min for n, p in rng}
    mid = {n: p.opt for n, p in rng}
    hi = {n: p.max for n, p in rng}
    for shapes in (lo, _geo_mid(lo, mid, multiples), mid, _geo_mid(mid, hi, multiples), hi):
        if shapes not in picks:
            picks.append(shapes)
    return picks


def _geo_mid(a: ShapeMap, b: ShapeMap, multiples: Mapping[Axis, int] | None) -> ShapeMap:
    out: ShapeMap = {}
    for name, sa in a.items():
        dims = []
        for axis, (x, y) in enumerate(zip(sa, b[name], strict=True)):
            m = (multiples or {}).get((name, axis), 1)
            dims.append(_snap(math.sqrt(x * y), m, min(x, y), max(x, y)))
        out[name] = tuple(dims)
    return out


def _snap(value: float, multiple: int, lo: int, hi: int) -> int:
    """The multiple of ``multiple`` nearest ``value`` inside [lo, hi]; else ``value`` rounded."""
    multiple = max(1, multiple)
    candidates = [k * multiple for k in (math.floor(value / multiple), math.ceil(value / multiple))]
    inside = [c for c in candidates if lo <= c <= hi]
    if inside:
        return min(inside, key=lambda c: (abs(c - value), c))
    return min(max(round(value), lo), hi)


def probe_cell(
    rng: Profile, probes: Sequence[ShapeMap], worst: ShapeMap, multiples: Mapping[Axis, int] | None = None
) -> Profile:
    """The profile added for a slow probe: opt at the probe; on each axis it reaches halfway (in
    log scale, on the lattice) to the nearest other probe size below and above, or to the
    range's end where no probe lies beyond it. Shapes between two probes are shared by their
    cells and by the range's profile, and run in whichever was measured faster near them."""
    prof = Profile()
    for name, p in rng:
        at = worst[name]
        lo, hi = [], []
        for axis, size in enumerate(at):
            m = (multiples or {}).get((name, axis), 1)
            sizes = {s[name][axis] for s in probes}
            below = max((v for v in sizes if v < size), default=None)
            above = min((v for v in sizes if v > size), default=None)
            lo.append(p.min[axis] if below is None else _snap(math.sqrt(below * size), m, below + 1, size))
            hi.append(p.max[axis] if above is None else _snap(math.sqrt(size * above), m, size, above - 1))
        prof.add(name, lo, at, hi)
    return prof


def overlap_centres(profiles: Sequence[Profile], multiples: Mapping[Axis, int] | None = None) -> list[ShapeMap]:
    """The centre (geometric, on the lattice) of each region two profiles share."""
    out: list[ShapeMap] = []
    for i, a in enumerate(profiles):
        for b in profiles[i + 1 :]:
            centre: ShapeMap = {}
            for name, pa in a:
                pb = b.inputs[name]
                lo = [max(x, y) for x, y in zip(pa.min, pb.min, strict=True)]
                hi = [min(x, y) for x, y in zip(pa.max, pb.max, strict=True)]
                if any(x > y for x, y in zip(lo, hi, strict=True)):
                    break
                centre[name] = tuple(
                    _snap(math.sqrt(x * y), (multiples or {}).get((name, k), 1), x, y)
                    for k, (x, y) in enumerate(zip(lo, hi, strict=True))
                )
            else:
                if centre not in out:
                    out.append(centre)
    return out


def plan_profiles(
    rng: Profile,
    measurer: Measurer,
    *,
    probes: Sequence[ShapeMap] | None = None,
    target: float = DEFAULT_TARGET,
    max_profiles: int | None = None,
    multiples: Mapping[Axis, int] | None = None,
    progress: ProgressFn | None = None,
) -> ProfilePlan:
    """Plan profiles over ``rng`` (one profile: min/opt/max of the user's range); see the module."""
    report = progress or (lambda _msg: None)
    if max_profiles is not None and max_profiles < 1:
        raise DynashapeError(f"--profiles auto:N needs N >= 1, got {max_profiles}")
    if target < 1.0:
        raise DynashapeError(f"--target {target}: a dynamic engine cannot beat static ones; use >= 1.0")
    probe_list = _dedupe(probes if probes else default_probes(rng, multiples))
    outside = [p for p in probe_list if not rng.contains(p)]
    if outside:
        raise DynashapeError(
            f"probe shape {format_shapes(outside[0])} is outside the range being planned ({rng})"
        )
    static: dict[str, float | None] = {}
    for i, probe in enumerate(probe_list, 1):
        report(f"static engine {i}/{len(probe_list)} at {format_shapes(probe)}")
        static[shape_key(probe)] = measurer.static_ms(probe)
    timed = [p for p in probe_list if static[shape_key(p)] is not None]
    if not timed:
        raise DynashapeError("no static engine could be built at any probe shape; nothing to plan against")

    boxes = [rng]
    measured: dict[str, dict[str, float]] = {}
    steps: list[PlanStep] = []
    stopped = ""
    while True:
        for box in boxes:
            key = profile_key(box)
            if key not in measured:
                report(f"candidate profile {box}")
                measured[key] = measurer.profile_ms(box, [p for p in probe_list if box.contains(p)])
        ratios, _owner = _ratios(boxes, measured, timed, static)
        over = sorted(
            (p for p in timed if (ratios[shape_key(p)] or 0.0) > target),
            key=lambda p: -(ratios[shape_key(p)] or 0.0),
        )
        if not over:
            stopped = f"every probe within {target:.2f}x of static"
        elif max_profiles is not None and len(boxes) >= max_profiles:
            stopped = f"reached {max_profiles} profile(s); {len(over)} probe(s) still above {target:.2f}x"
        action = ""
        if not stopped:
            known = {profile_key(b) for b in boxes}
            for w in over:
                cell = probe_cell(rng, probe_list, w, multiples)
                if profile_key(cell) not in known:
                    boxes.append(cell)
                    action = (f"add profile {len(boxes) - 1} around {shape_key(w)} "
                              f"(the slowest probe without one, {ratios[shape_key(w)]:.2f}x): {cell}")
                    break
            if not action:
                stopped = "every slow probe has a profile of its own; narrower ones would leave shapes between probes"
        if stopped:
            steps.append(PlanStep(list(boxes), ratios, "stop: " + stopped))
            break
        log.info("plan: %s", action)
        steps.append(PlanStep(list(boxes[:-1]), ratios, action))

    points = list(probe_list) + [c for c in overlap_centres(boxes, multiples) if c not in probe_list]
    report(f"final engine with {len(boxes)} profile(s)")
    per_point = measurer.final(boxes, points)
    results = [
        Measured(p, ms, static.get(shape_key(p)), is_probe=p in probe_list)
        for p, ms in zip(points, per_point, strict=True)
    ]
    stopped += _final_misses(results, steps[-1].ratios, target)
    builds = list(getattr(measurer, "builds", []))
    return ProfilePlan(boxes, results, target, max_profiles, stopped, steps, builds)


def _final_misses(results: Sequence[Measured], searched: Mapping[str, float | None], target: float) -> str:
    """What to add to the stop reason when the final engine misses the target at probes that
    their candidate engines met. TensorRT picks kernels anew in every build, so the engine that
    holds every profile can run a profile slower than its candidate did, and timings vary from
    run to run too (lraspp fp32 on the H100: 1x3x256x256 at 1.046x in the one-profile candidate,
    1.12x in the same profile of the final engine). The plan says so rather than claim the target."""
    missed = [m for m in results if m.is_probe and m.ratio is not None and m.ratio > target
              and (searched.get(shape_key(m.shapes)) or 0.0) <= target]
    if not missed:
        return ""
    listed = ", ".join(f"{shape_key(m.shapes)} {m.ratio:.2f}x" for m in missed)
    log.warning("plan: the final engine is slower than %.2fx of static at %s, which its candidate "
                "engines met (TensorRT picks kernels anew in each build; timings vary too)", target, listed)
    return f"; but the final engine measured above {target:.2f}x at {listed}"


def _dedupe(shapes: Iterable[ShapeMap]) -> list[ShapeMap]:
    out: list[ShapeMap] = []
    for s in shapes:
        if dict(s) not in out:
            out.append(dict(s))
    return out


def _ratios(
    boxes: Sequence[Profile],
    measured: Mapping[str, Mapping[str, float]],
    probes: Sequence[ShapeMap],
    static: Mapping[str, float | None],
) -> tuple[dict[str, float | None], dict[str, int]]:
    """Per probe: the best ratio over the profiles holding it, and which profile that is."""
    ratios: dict[str, float | None] = {}
    owner: dict[str, int] = {}
    for probe in probes:
        key = shape_key(probe)
        best: tuple[float, int] | None = None
        for i, box in enumerate(boxes):
            ms = measured[profile_key(box)].get(key)
            if ms is not None and box.contains(probe) and (best is None or ms < best[0]):
                best = (ms, i)
        base = static.get(key)
        if best is None or not base:
            ratios[key] = None
            continue
        ratios[key] = best[0] / base
        owner[key] = best[1]
    return ratios, owner


# --------------------------------------------------------------------------- TensorRT


def default_cache_dir(model_sha256: str) -> Path:
    """Per-model cache folder: $DYNASHAPE_CACHE_DIR, else $XDG_CACHE_HOME/dynashape, else
    ~/.cache/dynashape; then the first 16 hex digits of the model's SHA-256."""
    root = os.environ.get("DYNASHAPE_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "dynashape")
    return Path(root) / model_sha256[:16]


def default_timing_cache(model_sha256: str, tensorrt_version: str, compute_capability: str) -> Path:
    """The timing cache shared by every build of one model on one TensorRT and GPU type."""
    tag = f"trt{tensorrt_version}-sm{compute_capability}".replace("/", "_")
    return default_cache_dir(model_sha256) / f"timing-{tag}.cache"
