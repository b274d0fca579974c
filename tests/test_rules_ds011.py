"""DS011: a learned position embedding ``[1, L0, C]`` added to tokens whose count follows the input
size (ViT): an error, not fixable (interpolating it changes the numbers); no embedding, no finding."""

from __future__ import annotations

from typing import Any

import models_reports as R
import numpy as np
import pytest

from dynashape.backends.ort import RunError, run_model
from dynashape.pipeline.check import check_model
from dynashape.pipeline.fix import fix_model
from dynashape.testing import random_feeds

pytest.importorskip("torch")

DYNAMIC = {0: "N", 2: "H", 3: "W"}


def _ds011(report: Any) -> list[Any]:
    return [f for f in report.findings if f.rule == "DS011"]


def _vit(name: str, img: int) -> Any:
    module = R.torch_modules()[name](img=img)  # type: ignore[operator]
    return R.export_torch(module, (1, 3, img, img), DYNAMIC)


@pytest.mark.parametrize("img", [32, 48])
def test_position_embedding_fixes_the_token_count(img: int) -> None:
    model = _vit("vit", img)
    s0: dict[str, tuple[int, ...]] = {"x": (1, 3, img, img)}
    report = check_model(model, export_shape=s0)
    (f,) = _ds011(report)
    tokens = (img // 8) ** 2
    assert (f.rule, f.op, f.severity, f.fixable) == ("DS011", "Add", "error", False)
    assert f.node in {n.name for n in model.graph.node if n.op_type == "Add"}
    assert f.baked_value == tokens
    assert f"L0 = {tokens}" in f.message
    # the hazard is real: the export shape runs, a size with another token count does not
    run_model(model, random_feeds(model, s0))
    with pytest.raises(RunError):
        run_model(model, random_feeds(model, {"x": (1, 3, img + 16, img + 16)}))
    # not rewritten
    result = fix_model(model, export_shape=s0)
    assert ("DS011", f.node) in {(u.rule, u.node) for u in result.unfixed}
    assert not [a for a in result.applied if f.node in a]


def test_embedding_mean_broadcast_over_tokens_is_not_reported() -> None:
    model = _vit("vit_no_pos", 32)
    report = check_model(model, export_shape={"x": (1, 3, 32, 32)})
    assert _ds011(report) == []
    # and it does run at another token count
    out = run_model(model, random_feeds(model, {"x": (2, 3, 64, 48)}))
    assert next(iter(out.values())).shape == (2, 5)
    assert np.isfinite(next(iter(out.values()))).all()
