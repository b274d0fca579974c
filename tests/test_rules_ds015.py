"""DS015: graph inputs with fixed dims on axes probably meant dynamic (a batch fixed at 1, only the
batch dynamic, a spatial dim of 1): reported with the axes and sizes, never rewritten."""

from __future__ import annotations

from typing import Any

import models as M
import models_reports as R
import pytest

from dynashape.backends.ort import RunError
from dynashape.pipeline.check import check_model
from dynashape.pipeline.fix import fix_model

S0: dict[str, tuple[int, ...]] = {"x": (1, 4, 32, 32)}


def _ds015(report: Any) -> list[Any]:
    return [f for f in report.findings if f.rule == "DS015"]


@pytest.mark.parametrize(("dims", "severity", "static", "other"), [
    ([1, 4, "H", "W"], "info", {"0": 1}, (2, 4, 32, 32)),
    (["N", 4, 32, 32], "warning", {"2": 32, "3": 32}, (1, 4, 32, 48)),
    (["N", 4, "H", 1], "warning", {"3": 1}, (1, 4, 32, 2)),
    ([1, 4, 32, "W"], "warning", {"0": 1, "2": 32}, (1, 4, 16, 32)),
])
def test_static_axes_of_a_dynamic_input_are_reported(dims: list[Any], severity: str, static: dict[str, int],
                                                     other: tuple[int, ...]) -> None:
    s0: dict[str, tuple[int, ...]] = {"x": tuple(d if isinstance(d, int) else 32 for d in dims)}
    model = R.conv_input(dims)
    report = check_model(model, export_shape=s0)
    (f,) = _ds015(report)
    assert (f.rule, f.node, f.op, f.severity, f.fixable) == ("DS015", "conv", "Conv", severity, False)
    assert f.baked_value == static
    # the hazard is real: ONNX Runtime rejects another size on a fixed axis
    M.run(model, s0["x"])
    with pytest.raises(RunError):
        M.run(model, other)
    # nothing to rewrite: the finding stays unfixed and the graph is unchanged
    result = fix_model(model, export_shape=s0)
    assert [(u.rule, u.node) for u in result.unfixed if u.rule == "DS015"] == [("DS015", "conv")]
    assert result.applied == []


def test_fully_dynamic_input_is_not_reported() -> None:
    report = check_model(R.conv_input(["N", 4, "H", "W"]), export_shape=S0)
    assert _ds015(report) == []
    assert any(r.rule == "DS015" and r.node == "conv" for r in report.refusals)


def test_nhwc_channels_look_intended() -> None:
    # a last axis of 3 on a 4-D input is NHWC channels: static on purpose (the Conv reads axis 1 = H
    # here, which is 4 at the export shape: the check is static, the graph need not make sense as NHWC)
    model = R.conv_input(["N", "H", "W", 3])
    report = check_model(model, export_shape={"x": (1, 4, 32, 3)})
    assert _ds015(report) == []
    assert any(r.rule == "DS015" and r.node == "conv" and "intended" in r.reason for r in report.refusals)
