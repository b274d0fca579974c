"""DS003: the valid-size lattice of each dynamic axis, by probing shapes (no tensor arithmetic).

Stride-2 layers on sizes that are not multiples of the total stride, followed by upsampling and a
join (or an output expected to match the input) make the graph valid only on a lattice
``{min, min + m, min + 2m, ...}``. Around the export size S0 (which is valid) the scan looks for the
first valid size above it: the distance is the required multiple m. The minimum is found by
bisection over the multiples of m below S0. Cost: about m + log2(S0/m) probes per axis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import cached_property

import onnx
import onnx_ir as ir

from dynashape.analysis.context import JOINS
from dynashape.analysis.probe import Probe, Prober
from dynashape.findings import AxisLattice, Finding, Lattice
from dynashape.model import InputInfo, graph_inputs
from dynashape.shapes import Profile, RangeMap, ShapeMap, format_shape, format_shapes

log = logging.getLogger(__name__)

MAX_MULTIPLE = 256
PROGRESSION_STEPS = 4  # valid sizes base + j*m checked for j = 1..4 before m is taken as the multiple
# ... and, for m > 1, for these j too: when only deep levels are joined, the valid sizes are a band
# of residues (H mod 32 in {0, 17..31} for one join at stride 16), and a step of 31 walks down that
# band (31, 30, 29, 28 are all valid) for as many steps as it is wide. m = 1, the usual answer, is
# not checked that far (it would cost 2 probes an axis on every model): it is only wrong when S0
# itself lies inside such a band, not at its edge (S0 a multiple of the stride is at the edge).
FAR_STEPS = (8, 16)
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


class Validity:
    """Whether the graph is valid at one size, and if not, why.

    A scan meets many failures and reports one: a failure's words (``reason``, ``node``) and,
    for a join, how each operand got its size (``paths``) are read from ``failed`` (the probe)
    when first asked for, as the probe makes them then (see ``Probe.ok``)."""

    def __init__(self, ok: bool, reason: str = "", node: str | None = None, *, failed: Probe | None = None,
                 explain: Callable[[Probe], list[str] | None] | None = None) -> None:
        self.ok = ok
        self._reason = reason
        self._node = node
        self._failed = failed
        self._explain = explain

    def __repr__(self) -> str:
        return f"Validity(ok={self.ok!r}, reason={self.reason!r}, node={self.node!r})"

    @cached_property
    def reason(self) -> str:
        failure = self._failed.failure if self._failed is not None else None
        return str(failure) if failure is not None else self._reason

    @cached_property
    def node(self) -> str | None:
        failure = self._failed.failure if self._failed is not None else None
        return failure.node if failure is not None else self._node

    @cached_property
    def paths(self) -> list[str] | None:
        """For a join that fails: how each operand got its size."""
        if self._failed is None or self._explain is None:
            return None
        return self._explain(self._failed)


def axis_label(info: InputInfo, axis: int) -> str:
    d = info.dims[axis]
    if isinstance(d, str):
        return d
    return AXIS_NAMES.get(axis, f"axis {axis}") if info.rank == 4 else f"axis {axis}"


class LatticeScanner:
    """Probes one model along each dynamic axis of its inputs."""

    def __init__(
        self, model: onnx.ModelProto, s0: ShapeMap, prober: Prober | None = None, ir_model: ir.Model | None = None
    ) -> None:
        """``ir_model``: ``model`` already deserialized (check has it), else done when needed."""
        self.model = model
        self.s0 = s0
        self.prober = prober or Prober(model)
        self.inputs = graph_inputs(model)
        self.outputs = [o.name for o in model.graph.output]
        self._ir: ir.Model | None = ir_model
        self.problems: list[str] = []  # axes left without a lattice, and why (see scan_axis)

    def _with(self, name: str, axis: int, size: int) -> ShapeMap:
        shapes = dict(self.s0)
        shape = list(shapes[name])
        shape[axis] = size
        shapes[name] = tuple(shape)
        return shapes

    def _following_outputs(self, name: str, axis: int) -> list[tuple[str, int]]:
        """Output axes equal to this input axis at S0 and at 2*S0: they should follow it."""
        base = self.s0[name][axis]
        p0 = self.prober.at(self.s0)
        p2 = self.prober.at(self._with(name, axis, 2 * base))
        follow = []
        for out in self.outputs:
            d0, d2 = p0.shape(out), p2.shape(out)
            if not d0 or not d2 or len(d0) != len(d2):
                continue
            for j, (a, b) in enumerate(zip(d0, d2)):
                if a == base and b == 2 * base and j >= 1:
                    follow.append((out, j))
        return follow

    def validity(self, name: str, axis: int, size: int, follow: list[tuple[str, int]]) -> Validity:
        # reads only whether the graph is valid there and the followed outputs' dims
        probe: Probe = self.prober.outcome(self._with(name, axis, size), [out for out, _ in follow])
        if not probe.ok:
            return Validity(False, failed=probe, explain=self._failed_join_paths)
        for out, j in follow:
            dims = probe.shape(out)
            if dims is not None and j < len(dims) and dims[j] is not None and dims[j] != size:
                return Validity(
                    False, f"output {out!r} axis {j} is {dims[j]} for input size {size} (it should follow it)"
                )
        return Validity(True)

    def _failed_join_paths(self, probe: Probe) -> list[str] | None:
        return self._join_paths(probe, probe.failure.node if probe.failure is not None else None)

    def _join_paths(self, probe: Probe, node_name: str | None) -> list[str] | None:
        """For a failing join: each operand's size at this probe and the strided path it came by."""
        if node_name is None:
            return None
        if self._ir is None:
            self._ir = ir.serde.deserialize_model(self.model)
        node = next((n for n in self._ir.graph if n.name == node_name), None)
        if node is None or node.op_type not in JOINS:
            return None
        paths = []
        for value in node.inputs:
            if value is None or value.const_value is not None:
                continue
            dims = probe.shape(value.name or "")
            size = "x".join("?" if d is None else str(d) for d in dims) if dims else "?"
            paths.append(f"{value.name} ({size}): " + " -> ".join(strided_path(value)))
        return paths

    def scan_axis(self, info: InputInfo, axis: int) -> tuple[AxisLattice | None, Validity | None, int | None]:
        """The lattice of one axis, plus an invalid example (validity, size) off the lattice.

        The model is correct at its export shape by construction, so a lattice never excludes it:
        where the graph is not consistent there, the export shape is wrong or a rewrite broke the
        graph, and no lattice is reported for the axis (None; see ``problems``)."""
        name = info.name
        base = self.s0[name][axis]
        follow = self._following_outputs(name, axis)
        base_ok = self.validity(name, axis, base, follow)
        if not base_ok.ok:
            problem = (
                f"{axis_label(info, axis)} of {name!r}: the graph is not consistent at the export shape "
                f"{format_shape(self.s0[name])} ({base_ok.reason}); either the export shape is wrong or a "
                "rewrite broke the graph there, so no lattice is reported for this axis"
            )
            log.warning("bug: %s", problem)
            self.problems.append(problem)
            return None, base_ok, base
        lat, bad, bad_size = self._scan_from(info, axis, base, follow)
        if not lat.contains(base):
            # the steps above only ever move by the multiple from base: this cannot happen unless
            # they are wrong; widen the lattice to one that holds base rather than exclude it
            lo = min(lat.min, base)
            wide = AxisLattice(lo, math.gcd(lat.multiple, abs(base - lat.min)) or 1)
            log.warning("bug: the lattice %s of %s[%d] excludes the export size %d; widened to %s",
                        lat, name, axis, base, wide)
            self.problems.append(f"{axis_label(info, axis)} of {name!r}: lattice widened to hold the export size")
            lat = wide
        return lat, bad, bad_size

    def _scan_from(
        self, info: InputInfo, axis: int, base: int, follow: list[tuple[str, int]]
    ) -> tuple[AxisLattice, Validity | None, int | None]:
        name = info.name
        is_batch = axis == 0 and info.rank >= 3
        limit = 8 if is_batch else MAX_MULTIPLE
        multiple = None
        first_bad: tuple[Validity, int] | None = None
        for d in range(1, limit + 1):
            # d is the multiple only if base + j*d stays valid for a few steps: with floor-mode
            # pooling the valid sizes can be {4k, 4k+1}, where base + 1 is valid but base + 2 is not
            for j in (*range(1, PROGRESSION_STEPS + 1), *(FAR_STEPS if d > 1 else ())):
                size = base + j * d
                v = self.validity(name, axis, size, follow)
                if not v.ok:
                    break
            if v.ok:
                multiple = d
                break
            if first_bad is None or size < first_bad[1]:
                first_bad = (v, size)
        if multiple is None:
            bad_v, bad_size = first_bad if first_bad else (None, None)
            return AxisLattice(base, base, irregular=[base]), bad_v, bad_size
        if base % multiple:
            # valid sizes are base + k*m: the lattice is offset
            offset_min = base % multiple
            lo = self._lowest(name, axis, follow, multiple, offset_min, base)
            return (
                AxisLattice(lo, multiple, irregular=None),
                (first_bad[0] if first_bad else None),
                (first_bad[1] if first_bad else None),
            )
        lo = self._lowest(name, axis, follow, multiple, multiple, base)
        bad = first_bad if first_bad else (None, None)
        return AxisLattice(lo, multiple), bad[0], bad[1]

    def _lowest(self, name: str, axis: int, follow: list[tuple[str, int]], m: int, first: int, base: int) -> int:
        """Smallest valid size first + k*m <= base, by bisection (validity grows with size)."""
        if self.validity(name, axis, first, follow).ok:
            return first
        lo, hi = 0, (base - first) // m  # invalid at lo, valid at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.validity(name, axis, first + mid * m, follow).ok:
                hi = mid
            else:
                lo = mid
        return first + hi * m

    def scan(self) -> tuple[Lattice, list[Finding]]:
        lattice: Lattice = {}
        findings: list[Finding] = []
        at_s0 = self.prober.at(self.s0)
        if at_s0.failure is not None:
            # the model is correct at its export shape by construction (see scan_axis)
            problem = (
                f"the graph is not consistent at the export shape {format_shapes(self.s0)} ({at_s0.failure}): "
                "either the export shape is wrong or a rewrite broke the graph there; no lattice is reported"
            )
            log.warning("bug: %s", problem)
            self.problems.append(problem)
            return lattice, findings
        for info in self.inputs:
            if info.name not in self.s0:
                continue
            for axis in info.dynamic_axes:
                lat, bad, bad_size = self.scan_axis(info, axis)
                if lat is None:
                    continue
                lattice.setdefault(info.name, {})[axis] = lat
                if lat.multiple > 1 or lat.irregular:
                    findings.append(self._finding(info, axis, lat, bad, bad_size))
        return lattice, findings

    def _finding(
        self, info: InputInfo, axis: int, lat: AxisLattice, bad: Validity | None, bad_size: int | None
    ) -> Finding:
        label = axis_label(info, axis)
        base = self.s0[info.name][axis]
        if lat.irregular:
            rule_text = f"{label} of {info.name!r} works only at its export size {base}"
        elif lat.min % lat.multiple:
            rule_text = (f"{label} of {info.name!r} must be {lat.min} plus a multiple of {lat.multiple} "
                         f"({lat.min}, {lat.min + lat.multiple}, {lat.min + 2 * lat.multiple}, ...)")
        else:
            rule_text = f"{label} of {info.name!r} must be a multiple of {lat.multiple}, at least {lat.min}"
        why = f"at {label} = {bad_size}: {bad.reason}" if bad and bad_size else ""
        if bad and bad.paths:
            why += "; the joined tensors come from: " + " | ".join(bad.paths)
        return Finding(
            rule="DS003",
            severity="warning",
            node=(bad.node if bad and bad.node else ""),
            op="",
            message=f"{rule_text}" + (f"; {why}" if why else ""),
            fixable=False,
            detected_by="lattice",
            baked_value={"input": info.name, "axis": axis, "min": lat.min, "multiple": lat.multiple},
            breaks_at=f"{label} not in {{{lat.min}, {lat.min + lat.multiple}, ...}}"
            if not lat.irregular
            else f"{label} != {base}",
            fix=(
                "restrict the profile to the lattice (dynashape build snaps to it), or pad inputs up to the "
                f"next multiple of {lat.multiple} with `fix --pad-to {lat.multiple}` (borders not bit-exact)"
            ),
            details={"input": info.name, "axis": axis, "paths": bad.paths if bad else None},
        )

    def following(self) -> dict[str, dict[str, bool]]:
        """Per output of the input's rank: does its size on each dynamic spatial input axis change
        when that input axis doubles? False means the output keeps one size whatever the input
        (a size baked in, or an adaptive pool); an axis of size 1 at both sizes (a global pool)
        has no size to follow and is left out, and so is a downsampled or upsampled axis that
        tracks the input."""
        result: dict[str, dict[str, bool]] = {}
        p0 = self.prober.at(self.s0)
        for info in self.inputs:
            for axis in info.dynamic_axes:
                if axis == 0 and info.rank >= 3:
                    continue
                p2 = self.prober.at(self._with(info.name, axis, 2 * self.s0[info.name][axis]))
                for out in self.outputs:
                    d0, d2 = p0.shape(out), p2.shape(out)
                    if d0 is None or d2 is None or len(d0) != info.rank or len(d2) != len(d0):
                        continue
                    a, b = d0[axis], d2[axis]
                    if a is None or b is None or a == b == 1:
                        continue
                    result.setdefault(out, {})[f"{info.name}[{axis}]"] = a != b
        return result


_STRIDED = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvTranspose"}


def strided_path(value: ir.Value, limit: int = 500) -> list[str]:
    """The ops that change the spatial size on the way from the graph input to ``value``."""
    steps: list[str] = []
    current: ir.Value | None = value
    while current is not None and limit > 0:
        limit -= 1
        node = current.producer()
        if node is None:
            steps.append(f"input {current.name}")
            break
        if node.op_type in _STRIDED:
            attr = node.attributes.get("strides")
            strides = list(attr.as_ints()) if attr is not None else []
            if any(st > 1 for st in strides):
                sign = "x" if node.op_type == "ConvTranspose" else "/"
                steps.append(f"{node.op_type} {sign}{max(strides)} ({node.name})")
        elif node.op_type in ("Resize", "Upsample"):
            steps.append(f"{node.op_type} ({node.name})")
        current = next((i for i in node.inputs if i is not None and i.const_value is None), None)
    return list(reversed(steps))


def suggest_profile(ranges: RangeMap, lattice: Lattice, opt: ShapeMap | None = None) -> Profile:
    """min/opt/max snapped onto the lattice: min up, max down, opt to the nearest valid size."""
    profile = Profile()
    for name, rng in ranges.items():
        lo, mid, hi = [], [], []
        for axis, ar in enumerate(rng.axes):
            lat = lattice.get(name, {}).get(axis)
            want = opt[name][axis] if opt and name in opt else (ar.min + ar.max) // 2
            if lat is None or ar.fixed:
                lo.append(ar.min)
                hi.append(ar.max)
                mid.append(min(max(want, ar.min), ar.max))
                continue
            a, b = snap_up(ar.min, lat), snap_down(ar.max, lat)
            if a > b:
                a = b = snap_up(ar.min, lat)
            m = min(max(snap_down(want, lat), a), b)
            lo.append(a)
            hi.append(b)
            mid.append(m)
        profile.add(name, lo, mid, hi)
    return profile


def check_ranges(lattice: Lattice, ranges: RangeMap) -> list[Finding]:
    """Error findings for requested ranges that include sizes off the lattice."""
    findings = []
    for name, rng in ranges.items():
        for axis, lat in lattice.get(name, {}).items():
            if axis >= len(rng.axes):
                continue
            ar = rng.axes[axis]
            off = [v for v in ar.values()[:4096] if not lat.contains(v)]
            if off:
                snapped_lo = snap_up(ar.min, lat)
                snapped_hi = snap_down(ar.max, lat) if ar.max >= lat.min else lat.min - 1
                findings.append(
                    Finding(
                        rule="DS003",
                        severity="error",
                        node="",
                        op="",
                        message=(
                            f"the range {ar} of {name!r} axis {axis} includes {len(off)} size(s) off the "
                            f"lattice (multiple of {lat.multiple}, min {lat.min}), e.g. {off[0]}"
                        ),
                        fixable=False,
                        detected_by="lattice",
                        baked_value={"input": name, "axis": axis, "min": lat.min, "multiple": lat.multiple},
                        breaks_at=", ".join(str(v) for v in off[:5]),
                        fix=(
                            f"use [{snapped_lo}..{snapped_hi}:{lat.multiple}] for this axis, or --pad-to {lat.multiple}"
                            if snapped_lo <= snapped_hi
                            else f"no size of the range is valid; use --pad-to {lat.multiple}"
                        ),
                        details={"input": name, "axis": axis},
                    )
                )
    return findings


def snap_down(size: int, lat: AxisLattice) -> int:
    """The largest lattice size <= ``size`` (``lat.min`` if there is none)."""
    return lat.min + max(0, (size - lat.min) // lat.multiple) * lat.multiple


def snap_up(size: int, lat: AxisLattice) -> int:
    """The smallest lattice size >= ``size``."""
    return lat.min + max(0, -(-(size - lat.min) // lat.multiple)) * lat.multiple


def describe(lattice: Lattice) -> str:
    parts = []
    for name, axes in lattice.items():
        for axis, lat in sorted(axes.items()):
            parts.append(f"{name}[{axis}]: multiple of {lat.multiple}, >= {lat.min}")
    return "; ".join(parts)


__all__ = ["LatticeScanner", "check_ranges", "describe", "format_shape", "snap_down", "snap_up"]
