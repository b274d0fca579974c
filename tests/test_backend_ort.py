"""backends/ort.py: the ONNX Runtime runner, small models from bytes and large ones from a file."""

from __future__ import annotations

import glob
import os
import tempfile

import models as M
import numpy as np
import pytest

from dynashape import model as model_module
from dynashape.backends import ort as ort_backend
from dynashape.backends.ort import OrtRunner, RunError
from dynashape.testing import random_feeds


def _outputs(model, feeds):  # type: ignore[no-untyped-def]
    with OrtRunner(model) as runner:
        return runner.infer(feeds)


def _leftovers() -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), "dynashape-ort-*"))


def test_a_large_model_runs_from_a_file_and_gives_the_same_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = M.resize_skip(32, 32)
    feeds = random_feeds(model, {"x": (1, 4, 32, 32)})
    small = _outputs(model, feeds)
    before = set(_leftovers())
    monkeypatch.setattr(ort_backend, "_LARGE_MODEL_BYTES", 0)  # every model is "large" now
    monkeypatch.setattr(model_module, "_EXTERNAL_OVER", 1)  # and every weight goes to the weights file
    runner = OrtRunner(model)
    assert runner._model_file is not None and os.path.isfile(runner._model_file)
    assert os.path.getsize(runner._model_file + ".weights") > 0
    model.graph.node[0].name = "edited after the runner was made"  # the runner has its own snapshot
    with runner:
        large = runner.infer(feeds)
    assert set(large) == set(small)
    for name in small:
        np.testing.assert_array_equal(large[name], small[name])
    assert set(_leftovers()) == before  # the file went with the session's creation


def test_a_large_model_never_activated_leaves_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_backend, "_LARGE_MODEL_BYTES", 0)
    before = set(_leftovers())
    runner = OrtRunner(M.resize_skip(32, 32))
    assert runner._model_file is not None
    del runner
    assert set(_leftovers()) == before


def test_a_runner_is_activated_once() -> None:
    runner = OrtRunner(M.resize_skip(32, 32))
    runner.activate()
    with pytest.raises(RuntimeError, match="activated once"):
        runner.activate()


def test_a_failing_session_is_a_run_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = M.resize_skip(32, 32)
    model.graph.node[0].op_type = "NoSuchOp"
    monkeypatch.setattr(ort_backend, "_LARGE_MODEL_BYTES", 0)
    before = set(_leftovers())
    with pytest.raises(RunError):
        OrtRunner(model).activate()
    assert set(_leftovers()) == before
