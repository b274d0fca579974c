"""How long ``check`` and ``fix`` take on large graphs (issue 16: on a 5,000-node graph, ``check`` in
under 1 s and ``fix`` with its own check and proofs in under 2 s, on one CPU core).

    python benchmarks/check_speed.py [--quick] [--no-torch] [--model PATH ...] [--json PATH]

Graphs timed, one run each:

* ``synthetic``: built here with onnx.helper, no PyTorch needed (``--quick``: about 1,000 nodes,
  else about 5,000): repeated blocks that fold and unfold the feature map through shape
  arithmetic the way the legacy exporter writes it (``Shape -> Gather -> Div -> Concat ->
  Reshape``, small shape constants as ``Constant`` nodes), ending in a frozen resize joined with
  a skip and a whole-map average pool, so ``check`` has findings and ``fix`` has rewrites to prove;
* ``swin_t``: torchvision's ``swin_t`` exported with the legacy exporter at 1x3x224x224 by
  ``dynashape export`` (6,285 nodes; skipped without torch/torchvision, or with ``--no-torch``);
* every ``--model PATH`` given.

For each: nodes, the time to load the file as the CLI does, ``check_model`` and ``fix_model``
(which runs its own check, then proves its rewrites with ONNX Runtime), the number of findings
and rewrites. The process is pinned to one CPU core (where the OS allows it), so ONNX Runtime's
threads share it too. Numbers are from one run; compare them only on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from dynashape.model import load_model, save_model, write_export_shape  # noqa: E402
from dynashape.pipeline.check import check_model  # noqa: E402
from dynashape.pipeline.fix import fix_model  # noqa: E402

TARGET_SECONDS = 2.0  # fix (its own check + proofs) of a 5,000-node graph on one core
CHECK_TARGET_SECONDS = 1.0  # check alone
SYNTH_S0 = (1, 3, 64, 64)


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


# ------------------------------------------------------------------------------ synthetic graph


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(0)
        self._k = 0

    def name(self, base: str) -> str:
        self._k += 1
        return f"{base}_{self._k}"

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, values: list[int]) -> str:
        """A small int64 ``Constant`` node, as the legacy exporter writes shape constants."""
        out = self.name("const")
        arr = np.asarray(values, np.int64)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=numpy_helper.from_array(arr, out)))
        return out

    def conv(self, x: str, cin: int, cout: int, *, k: int = 1, stride: int = 1) -> str:
        w = self.name("w")
        b = self.name("b")
        weight = (self.rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(weight, w))
        self.inits.append(numpy_helper.from_array((0.1 * self.rng.standard_normal(cout)).astype(np.float32), b))
        return self.op("Conv", [x, w, b], "conv", kernel_shape=[k, k], strides=[stride, stride],
                       pads=[k // 2] * 4)

    def fold_block(self, x: str, channels: int) -> str:
        """x (n, c, h, w) -> view(n, c, h // 2, w * 2) -> view(x.shape) -> 1x1 conv -> relu -> (x + .) / 2."""
        shape = self.op("Shape", [x], "shape")
        dims = [self.op("Gather", [shape, self.const([i])], "dim", axis=0) for i in range(4)]
        half = self.op("Div", [dims[2], self.const([2])], "half")
        double = self.op("Mul", [dims[3], self.const([2])], "double")
        target = self.op("Concat", [dims[0], dims[1], half, double], "target", axis=0)
        folded = self.op("Reshape", [x, target], "fold")
        back = self.op("Reshape", [folded, shape], "unfold")
        y = self.op("Relu", [self.conv(back, channels, channels)], "relu")
        return self.op("Mul", [self.op("Add", [x, y], "residual"), "half_f"], "mean")


def synthetic_model(nodes: int = 5000, channels: int = 8) -> onnx.ModelProto:
    """About ``nodes`` nodes, exported (so to speak) at ``SYNTH_S0``, with two fixable hazards."""
    g = _Graph()
    g.inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "half_f"))  # keeps values bounded
    h0, w0 = SYNTH_S0[2], SYNTH_S0[3]
    stem = g.op("Relu", [g.conv("input", 3, channels, k=3, stride=2)], "stem")  # h0/2
    x = stem
    while len(g.nodes) < nodes - 30:
        x = g.fold_block(x, channels)
    # a frozen F.interpolate(size=(h0/2, w0/2)) of a stride-2 map joined with the stem (DS002)
    down = g.op("MaxPool", [x], "down", kernel_shape=[2, 2], strides=[2, 2])
    nc = g.op("Slice", [g.op("Shape", [down], "shape"), g.const([0]), g.const([2]), g.const([0])], "nc")
    sizes = g.op("Concat", [nc, g.const([h0 // 2, w0 // 2])], "sizes", axis=0)
    up = g.op("Resize", [down, "", "", sizes], "up", mode="nearest", nearest_mode="floor",
              coordinate_transformation_mode="asymmetric")
    joined = g.op("Add", [stem, up], "join")
    # avg_pool2d(f, f.shape[2:]) with the sizes frozen (DS001)
    pooled = g.op("AveragePool", [joined], "pool", kernel_shape=[h0 // 2, w0 // 2], strides=[h0 // 2, w0 // 2])
    g.nodes.append(helper.make_node("Flatten", [pooled], ["output"], name="flatten", axis=1))
    graph = helper.make_graph(
        g.nodes, "check_speed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, None])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_export_shape(model, {"input": SYNTH_S0})
    onnx.checker.check_model(model)
    return model


def swin_t_model(directory: Path) -> Path | None:
    try:
        import torch

        from dynashape.export import export_module
        from dynashape.testing import import_torchvision

        tv = import_torchvision()
    except Exception as exc:  # no torch or torchvision: time the rest
        print(f"swin_t: skipped ({type(exc).__name__}: {exc})")
        return None
    torch.manual_seed(0)
    path = directory / "swin_t.onnx"
    export_module(tv.models.swin_t(weights=None), {"input": (1, 3, 224, 224)}, dynamic={"input": [0, 2, 3]},
                  exporter="legacy", path=path)
    return path


# ------------------------------------------------------------------------------------- timing


def time_one(name: str, path: Path) -> dict[str, Any]:
    t = time.perf_counter()
    model = load_model(path)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    report = check_model(model, path=str(path))
    check_s = time.perf_counter() - t
    t = time.perf_counter()
    fixed = fix_model(model)
    fix_s = time.perf_counter() - t
    row = {
        "model": name, "nodes": len(model.graph.node), "load_s": round(load_s, 3),
        "check_s": round(check_s, 3), "fix_s": round(fix_s, 3),
        "findings": len(report.findings), "rewrites": len(fixed.applied),
        "proof_runs": (1 if fixed.export_proof else 0) + len(fixed.other_proofs),
    }
    # `dynashape fix` is check + rewrite + proof in one
    verdicts = ", ".join(
        f"{what} {'meets' if took <= target else 'misses'} {target:.0f} s"
        for what, took, target in (("check", check_s, CHECK_TARGET_SECONDS), ("fix", fix_s, TARGET_SECONDS))
    )
    print(f"{name:>12}: {row['nodes']:6d} nodes  load {load_s:5.2f} s  check {check_s:5.2f} s  "
          f"fix (its own check + proofs) {fix_s:5.2f} s  findings {row['findings']}  rewrites {row['rewrites']}"
          f"  ({verdicts})", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="synthetic graph of ~1,000 nodes only (CI)")
    ap.add_argument("--no-torch", action="store_true", help="skip the swin_t export")
    ap.add_argument("--model", action="append", default=[], metavar="PATH", help="also time this ONNX file")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    args = ap.parse_args(argv)
    print(f"check_speed: {pin_to_one_core()}; one run each", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        synth = directory / "synthetic.onnx"
        save_model(synthetic_model(1000 if args.quick else 5000), synth)
        rows.append(time_one("synthetic", synth))
        if not args.quick and not args.no_torch:
            swin = swin_t_model(directory)
            if swin is not None:
                rows.append(time_one("swin_t", swin))
        for path in args.model:
            rows.append(time_one(Path(path).name, Path(path)))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"target_s": TARGET_SECONDS, "check_target_s": CHECK_TARGET_SECONDS, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
