"""DS010: an export-time size (``int(x.shape[i])`` / ``.item()``) baked into an input no other rule
owns (TopK k here): reported, never rewritten; a k that follows Shape(x), or equals no size, is not."""

from __future__ import annotations

from typing import Any

import models as M
import models_reports as R
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from dynashape.pipeline.check import check_model
from dynashape.pipeline.fix import fix_model
from dynashape.testing import assert_models_equivalent


def _ds010(report: Any) -> list[Any]:
    return [f for f in report.findings if f.rule == "DS010"]


@pytest.mark.parametrize(("s0", "w0"), [((1, 4, 24, 40), 40), ((1, 4, 40, 48), 40), ((2, 4, 16, 16), 16)])
def test_topk_k_baked_from_the_export_size_is_reported(s0: tuple[int, int, int, int], w0: int) -> None:
    model = R.topk("baked", w0=w0)
    before = model.SerializeToString()
    report = check_model(model, export_shape={"x": s0})
    (f,) = _ds010(report)
    assert (f.rule, f.node, f.op, f.severity, f.fixable) == ("DS010", "topk", "TopK", "warning", False)
    assert f.baked_value == w0
    assert str(w0) in f.message
    # the hazard is real: k stays w0 where the input's last axis does not
    n, c, h, w = s0
    assert M.run(model, s0)["values"].shape == (n, c, h, w0)
    assert M.run(model, (n, c, h, w + 8))["values"].shape[-1] == w0
    # fix cannot rewrite it: DS010 is left unfixed, and what fix did (DS016's fold of k) is exact
    result = fix_model(model, export_shape={"x": s0})
    assert [(u.rule, u.node) for u in result.unfixed if u.rule == "DS010"] == [("DS010", "topk")]
    assert_models_equivalent(model, result.fixed, {"x": s0})
    assert model.SerializeToString() == before


def _trilu(k0: int) -> onnx.ModelProto:
    """Trilu(x, k) with k a scalar Constant (``int(x.shape[-1])`` traced at W = k0)."""
    g = M.GraphBuilder(17)
    g.nodes.append(helper.make_node("Constant", [], ["k"], name="k",
                                    value=numpy_helper.from_array(np.array(k0, np.int64), "k")))
    g.op("Trilu", [M.X, "k"], "tril", upper=0)
    return g.model(["tril"])


def test_trilu_k_baked_from_the_export_size_is_reported() -> None:
    report = check_model(_trilu(24), export_shape={"x": (1, 4, 32, 24)})
    (f,) = _ds010(report)
    assert (f.node, f.op, f.severity, f.fixable, f.baked_value) == ("tril", "Trilu", "warning", False, 24)


@pytest.mark.parametrize("k", ["initializer", "shape"])
def test_topk_k_that_is_no_export_size_or_follows_the_input_is_not_reported(k: str) -> None:
    # "initializer": k = 5, no dim of the input at S0; "shape": k = Shape(x)[3], it follows W
    report = check_model(R.topk(k), export_shape={"x": (1, 4, 32, 32)})
    assert _ds010(report) == []
    assert any(r.rule == "DS010" and r.node == "topk" for r in report.refusals)


def test_baked_k_equal_to_no_dynamic_dim_is_not_reported() -> None:
    report = check_model(R.topk("baked", w0=5), export_shape={"x": (1, 4, 32, 32)})
    assert _ds010(report) == []
    report = check_model(_trilu(7), export_shape={"x": (1, 4, 32, 24)})
    assert _ds010(report) == []
