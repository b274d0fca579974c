"""DS016: ops TensorRT's ONNX parser rejects whatever the input shape.

Two kinds, told apart because only one has an exact fix:

* an input TensorRT needs as a constant (``TopK`` K, ``axes`` of ``Slice``/``Squeeze``/
  ``Unsqueeze``/``Pad``/``Reduce*``, ``Resize`` scales) is computed by nodes instead. When every
  leaf of that computation is a constant, the value is the same at every input size: it is
  folded into an initializer (evaluated with ``onnx.reference``). A computation that reaches
  ``Shape``/``Size`` of a real tensor or a graph input is never folded: that would freeze the
  export shape, the very hazard dynashape removes; it is reported instead.
* attributes TensorRT does not implement (cubic or antialiased ``Resize``): reported with the
  TensorRT version the finding was checked against.

Sources (onnx-tensorrt ``docs/operators.md``, the 8.4 and 8.5 releases): ``Resize`` modes
``nearest`` and ``linear`` only; ``TopK``: "K input must be an initializer"; ``Slice``: "axes must
be an initializer"; ``Squeeze``: "axes must be an initializer"; ``Unsqueeze``: "axes must be a
constant tensor". Later versions were not checked: findings say "not supported by TensorRT 8.5".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir

from dynashape.analysis.context import Context, origin_of
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder

_REDUCE = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)
# op -> {input slot: what TensorRT calls it}
CONSTANT_SLOTS: dict[str, dict[int, str]] = {
    "TopK": {1: "K"},
    "Slice": {3: "axes"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
    "Pad": {3: "axes"},
    "Resize": {1: "roi", 2: "scales"},
    # weights computed in the graph from constants (HF BiT's weight standardization): TensorRT 8.5
    # parsed BiT's once its training-mode BatchNormalization was folded, then failed the build
    # with "Cask convolution isConsistent" on the computed weights
    "Conv": {1: "weights"},
    "ConvTranspose": {1: "weights"},
    **{op: {1: "axes"} for op in _REDUCE},
}
_WEIGHT_SLOTS = {"weights"}
TRT_CHECKED = "TensorRT 8.5"
_MAX_FOLD_NODES = 256
_MAX_FOLD_ELEMENTS = 1 << 16
_MAX_FOLD_WEIGHT_ELEMENTS = 1 << 24  # a folded weight replaces one of the same size


def _slots(node: ir.Node) -> Iterator[tuple[int, str, ir.Value]]:
    for slot, what in CONSTANT_SLOTS.get(node.op_type, {}).items():
        if slot < len(node.inputs) and node.inputs[slot] is not None:
            value = node.inputs[slot]
            assert value is not None
            yield slot, what, value


@dataclass(frozen=True)
class FoldPlan(RewritePlan):
    """DS016: fold the constant-only subgraphs feeding input ``slot`` (the outputs of its nodes)
    into initializers."""

    slots: tuple[tuple[int, tuple[str, ...]], ...]


@dataclass(frozen=True)
class FoldBatchNormPlan(RewritePlan):
    """DS016: fold the training-mode BatchNormalization of constants (its subgraph's node outputs)."""

    outputs: tuple[str, ...]


class TensorRTUnsupported(Rule[FoldPlan]):
    id = "DS016"
    title = ("Op TensorRT rejects at any shape: computed K/axes/scales (folded when constant), "
             "cubic or antialiased Resize")
    ops = tuple(CONSTANT_SLOTS)

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        foldable: dict[str, list[str]] = {}  # slot -> outputs of the nodes to fold
        problems: list[str] = []
        for slot, what, value in _slots(node):
            if value.const_value is not None:
                continue
            producer = value.producer()
            if producer is not None and producer.op_type == "Constant":
                continue  # the parser imports Constant nodes as weights
            origin = origin_of(value, _MAX_FOLD_NODES)
            kind, nodes, why = origin.kind, origin.nodes, origin.why
            if kind == "constant":
                foldable[str(slot)] = [o.name for n in nodes for o in n.outputs if o is not None and o.name]
            elif what not in _WEIGHT_SLOTS:  # weights made from data (dynamic filters): not checked here
                problems.append(
                    f"{what} ({value.name}) is not a constant: {why}; not supported by {TRT_CHECKED} "
                    f"(onnx-tensorrt operators.md: {node.op_type} {what} must be an initializer)"
                )
        if node.op_type == "Resize":
            mode = node.attributes.get_string("mode", "nearest")
            if mode not in ("nearest", "linear"):
                problems.append(
                    f"mode {mode!r} is not supported by {TRT_CHECKED} (onnx-tensorrt operators.md lists "
                    "the modes nearest and linear); export with mode='bilinear' or resize outside the engine"
                )
            if node.attributes.get_int("antialias", 0):
                problems.append(
                    f"antialias=1 is not supported by {TRT_CHECKED} (not among the Resize options in "
                    "onnx-tensorrt operators.md); export with antialias=False"
                )
        if not foldable and not problems:
            return self.refuse(node, "every input TensorRT needs as a constant is one (initializer or Constant)")
        folded_txt = ", ".join(CONSTANT_SLOTS[node.op_type][int(s)] for s in foldable)
        fixable = bool(foldable) and not problems
        parts = []
        if foldable:
            parts.append(f"{folded_txt} is computed by nodes from constants only; {TRT_CHECKED}'s ONNX parser "
                         "needs it as an initializer")
        parts.extend(problems)
        fix = (f"fold the constant subgraph feeding {folded_txt} into an initializer (its value is the same "
               "at every input size)") if fixable else (
            "not rewritten: " + "; ".join(problems)
            + (f" (the constant {folded_txt} would be folded)" if foldable else ""))
        return self.finding(
            node, severity="warning" if fixable else "error",
            message=f"{node.op_type}: " + "; ".join(parts), fixable=fixable,
            baked_value=None, breaks_at=f"every shape: the engine build fails ({TRT_CHECKED})", fix=fix,
            details={"checked_against": TRT_CHECKED},
            plan=FoldPlan(tuple((int(s), tuple(outs)) for s, outs in foldable.items())) if fixable else None,
        )

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: FoldPlan) -> str:
        done = []
        for slot, outputs in plan.slots:
            value = node.inputs[slot]
            assert value is not None and value.name
            try:
                arr = builder.fold(value.name, outputs)
            except Exception as exc:  # the constants fail to evaluate: the model fails there at run time too
                done.append(f"{value.name} not folded: evaluating its constants fails ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})")
                continue
            what = CONSTANT_SLOTS[node.op_type][slot]
            if arr.size > (_MAX_FOLD_WEIGHT_ELEMENTS if what in _WEIGHT_SLOTS else _MAX_FOLD_ELEMENTS):
                continue
            folded = builder.initializer(f"{node.name}_{CONSTANT_SLOTS[node.op_type][slot]}_folded", arr,
                                         avoid_node_outputs=True)
            node.replace_input_with(slot, folded)
            shown = arr.tolist() if arr.size <= 16 else f"<{'x'.join(map(str, arr.shape))} tensor>"
            done.append(f"{CONSTANT_SLOTS[node.op_type][slot]}={shown}")
        # the folded nodes are dead now unless something else reads them
        builder.remove_unused_nodes()
        return f"{node.name}: folded {', '.join(done)} into initializers"


class TrainingModeBatchNorm(Rule[FoldBatchNormPlan]):
    """``BatchNormalization`` with ``training_mode=1`` (batch statistics). TensorRT 8.5's parser
    rejects it ("does not support training_mode == 1", seen on the H200 with HF BiT). HF BiT's
    weight standardization calls ``F.batch_norm(weight, training=True)`` on the conv weight: a
    computation on constants only, the same at every input size, so it folds into the weight."""

    id = "DS016"
    title = "BatchNormalization in training mode (TensorRT rejects it): folded when it only normalizes weights"
    ops = ("BatchNormalization",)

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        if not node.attributes.get_int("training_mode", 0):
            return self.refuse(node, "inference mode (training_mode=0): TensorRT imports it")
        y = node.outputs[0]
        origin = origin_of(y, _MAX_FOLD_NODES)
        foldable = origin.kind == "constant"
        reason = (f"TensorRT 8.5's ONNX parser rejects BatchNormalization with training_mode=1 (statistics of "
                  f"the batch); {TRT_CHECKED} fails to build the engine")
        if foldable:
            outputs = [o.name for n in origin.nodes for o in n.outputs if o is not None and o.name]
            return self.finding(
                node, severity="warning", fixable=True,
                message=f"{reason}; here it normalizes constants only (a weight standardization)",
                breaks_at=f"every shape: the engine build fails ({TRT_CHECKED})",
                fix="fold it into an initializer: its value is the same at every input size",
                details={"checked_against": TRT_CHECKED},
                plan=FoldBatchNormPlan(tuple(outputs)),
            )
        return self.finding(
            node, severity="error", fixable=False,
            message=f"{reason}; it normalizes data ({origin.why or 'it depends on the input'})",
            breaks_at=f"every shape: the engine build fails ({TRT_CHECKED})",
            fix="not rewritten: export the module in eval mode (model.eval()) so BatchNorm uses its running statistics",
            details={"checked_against": TRT_CHECKED},
        )

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: FoldBatchNormPlan) -> str:
        y = node.outputs[0]
        assert y is not None and y.name
        arr = builder.fold(y.name, plan.outputs)
        if arr.size > _MAX_FOLD_WEIGHT_ELEMENTS:
            return f"{node.name}: not folded ({arr.size} elements)"
        folded = builder.initializer(f"{node.name}_folded", arr, avoid_node_outputs=True)
        builder.replace_uses(y, folded, take_name=False)  # an initializer keeps its own name
        builder.remove_unused_nodes()
        return f"{node.name}: training-mode BatchNormalization of constants folded into {folded.name}"


RULES: list[Rule] = [TensorRTUnsupported(), TrainingModeBatchNorm()]
