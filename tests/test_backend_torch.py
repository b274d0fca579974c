"""TorchRunner: PyTorch eager as a Runner, outputs flattened in the ONNX output order."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dynashape.backends.ort import run_model  # noqa: E402
from dynashape.backends.torch import TorchRunner, flatten_outputs  # noqa: E402
from dynashape.errors import DynashapeError  # noqa: E402
from dynashape.export import export_module  # noqa: E402
from dynashape.testing import max_abs_error  # noqa: E402


class Multi(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor) -> object:
        a, b = self.a(x), self.b(x)
        if self.kind == "tensor":
            return a
        if self.kind == "tuple":
            return a, (b, None)
        return {"out": a, "aux": b}


X = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_flatten_names() -> None:
    assert [n for n, _ in flatten_outputs(Multi("tensor")(torch.from_numpy(X)))] == ["output"]
    assert [n for n, _ in flatten_outputs(Multi("tuple")(torch.from_numpy(X)))] == ["output_0", "output_1_0"]
    assert [n for n, _ in flatten_outputs(Multi("dict")(torch.from_numpy(X)))] == ["out", "aux"]


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_runner_matches_the_exported_model(kind: str) -> None:
    net = Multi(kind).eval()
    exported = export_module(net, {"input": (1, 3, 8, 8)})
    names = [o.name for o in exported.model.graph.output]
    with TorchRunner(net, output_names=names) as runner:
        for shape in [(1, 3, 8, 8), (2, 3, 5, 7)]:
            x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
            ref = runner.infer({"input": x})
            assert list(ref) == names == runner.output_names()
            got = run_model(exported.model, {"input": x})
            assert [v.shape for v in got.values()] == [v.shape for v in ref.values()]
            assert max_abs_error(got, ref) < 1e-5
            assert all(isinstance(v, np.ndarray) for v in ref.values())


def test_runner_from_spec_and_inference_mode() -> None:
    with TorchRunner("dynashape.demo.model:build") as runner:
        out = runner.infer({"input": np.zeros((1, 3, 64, 64), np.float32)})
        assert runner.output_names() == ["output"]
        assert out["output"].shape == (1, 2, 64, 64)
        assert not runner.module.training


def test_runner_errors() -> None:
    net = Multi("dict").eval()
    with TorchRunner(net, output_names=["only_one"]) as runner, pytest.raises(DynashapeError, match="2 tensors"):
        runner.infer({"input": X})
    with TorchRunner(net, input_names=["x"]) as runner, pytest.raises(DynashapeError, match="no feed for input"):
        runner.infer({"input": X})
    runner = TorchRunner(net)
    with pytest.raises(RuntimeError, match="after the first infer"):
        runner.output_names()
