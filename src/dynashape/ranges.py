"""The default range around the export shape: where `verify` sweeps and `check` judges the lattice
when the user gives no ``--range``.

It lives apart from both so that `check` (which needs it to scan the lattice) and `verify` (which
sweeps it) do not import each other.
"""

from __future__ import annotations

import onnx

from dynashape.analysis.lattice import snap_down, snap_up
from dynashape.findings import Lattice
from dynashape.model import graph_inputs
from dynashape.shapes import AxisRange, RangeMap, ShapeMap, ShapeRange


def default_ranges(model: onnx.ModelProto, s0: ShapeMap, lattice: Lattice) -> RangeMap:
    """A range around the export shape, on the lattice: spatial S0/4 .. 2*S0, batch 1..4."""
    ranges: RangeMap = {}
    for info in graph_inputs(model):
        axes = []
        for axis, size in enumerate(s0[info.name]):
            if axis not in info.dynamic_axes:
                axes.append(AxisRange(size, size))
                continue
            lat = lattice.get(info.name, {}).get(axis)
            if axis == 0 and info.rank >= 3:
                axes.append(AxisRange(1, max(4, size)))
                continue
            step = lat.multiple if lat else 1
            lo = snap_up(max(1, size // 4), lat) if lat else max(1, size // 4)
            hi = snap_down(size * 2, lat) if lat else size * 2
            axes.append(AxisRange(lo, hi, step))
        ranges[info.name] = ShapeRange(tuple(axes))
    return ranges
