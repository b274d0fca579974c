"""DS001: pooling whose kernel is the export-time size of the axis it pools.

``h = torch.tensor(x.shape[2]).item(); F.avg_pool2d(q, [h, 1])`` exports an ``AveragePool`` with
``kernel_shape=[h0, 1]``. At the export shape it reduces the whole axis to 1; at a larger size it
returns H-h0+1 rows, at a smaller one the kernel no longer fits. The exact rewrite is a reduction
over the pooled axes (``ReduceMean``/``ReduceMax``, keepdims), or the global pool when every
spatial axis is pooled whole.
"""

from __future__ import annotations

import onnx_ir as ir

from dynashape.analysis import Context, const_i64, fmt
from dynashape.findings import Finding, Refusal
from dynashape.rules.base import Rule, input_names, new_name, replace_value

_REDUCE = {"AveragePool": "ReduceMean", "MaxPool": "ReduceMax"}
_GLOBAL = {"AveragePool": "GlobalAveragePool", "MaxPool": "GlobalMaxPool"}


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


class WholeAxisPooling(Rule):
    id = "DS001"
    title = "Pooling kernel equals the export-time size of the axis it pools (frozen [h, 1] / whole-map pool)"
    ops = ("AveragePool", "MaxPool")

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        kernel = _ints(node, "kernel_shape", [])
        x = node.inputs[0]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        if not kernel or x0 is None or len(x0) != len(kernel) + 2:
            return self.refuse(node, "input shape unknown at the export shape")
        spatial = len(kernel)
        pads = _ints(node, "pads", [0] * 2 * spatial)
        strides = _ints(node, "strides", [1] * spatial)
        dilations = _ints(node, "dilations", [1] * spatial)
        dynamic = set(ctx.dynamic_axes_of(x)) if x is not None else set()
        # a 2x2 or 3x3 window that happens to cover a 2x2/3x3 map at the export shape is ordinary
        # downsampling (MaxPool2d(2) deep in a net exported small); a strip kernel [h, 1] is not
        strip = 1 in kernel
        pooled = [
            2 + i for i, k in enumerate(kernel) if k > 1 and (k > 3 or strip) and x0[2 + i] == k and (2 + i) in dynamic
        ]
        if not pooled:
            return self.refuse(
                node,
                f"kernel {kernel} is not the size of a dynamic axis at the export shape "
                f"(input {fmt(x0)}): ordinary windowed pooling",
            )
        problems = []
        if any(pads):
            problems.append(f"it pads ({pads}), so the reduction is not exact")
        if any(d != 1 for d in dilations):
            problems.append("it is dilated")
        for i in range(spatial):
            if 2 + i not in pooled and (kernel[i] != 1 or strides[i] != 1):
                problems.append(f"axis {2 + i} is pooled with a window {kernel[i]}/{strides[i]}, not whole")
        if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
            problems.append("its indices output is used")
        baked = {str(a): x0[a] for a in pooled}
        x1_txt = fmt(x1) if x1 else "?"
        rows: list[int | None] = []
        for a in pooled:
            size = x1[a] if x1 else None
            rows.append(None if size is None else (size - kernel[a - 2]) // strides[a - 2] + 1)
        at_s1 = (
            "its kernel no longer fits"
            if any(r is not None and r < 1 for r in rows)
            else f"it returns {', '.join(str(r) for r in rows)} instead of 1 on axis {pooled}"
        )
        reduce_op = _REDUCE[node.op_type]
        whole = len(pooled) == spatial
        fix = f"{_GLOBAL[node.op_type]}" if whole else f"{reduce_op}(axes={pooled}, keepdims=1)"
        return Finding(
            rule=self.id,
            severity="error",
            node=node.name or "",
            op=node.op_type,
            inputs=input_names(node),
            message=(
                f"{node.op_type} kernel {kernel} equals the export-time size of axis "
                f"{', '.join(str(a) for a in pooled)} of its input ({fmt(x0)}): it pools the whole axis "
                f"only at the export shape; when its input is {x1_txt}, {at_s1}"
            ),
            fixable=not problems,
            baked_value=baked,
            breaks_at=f"every input size other than the export size (e.g. pool input {x1_txt})",
            fix=(
                f"replace with {fix}"
                if not problems
                else "not rewritten: "
                + "; ".join(problems)
                + "; in the source, pool with a kernel from the tensor (x.mean(dim, keepdim=True))"
            ),
            details={"pooled_axes": pooled, "global": whole},
        )

    def rewrite(self, ctx: Context, node: ir.Node, finding: Finding) -> str:
        graph = ctx.model.graph
        pooled: list[int] = finding.details["pooled_axes"]
        x = node.inputs[0]
        assert x is not None
        if finding.details["global"]:
            op = _GLOBAL[node.op_type]
            new = ir.node(op, [x], name=new_name(graph, f"{node.name}_global"))
        else:
            op = _REDUCE[node.op_type]
            if ctx.opset >= 18:
                axes = const_i64(graph, f"{node.name}_axes", pooled)
                new = ir.node(op, [x, axes], attributes={"keepdims": 1}, name=new_name(graph, f"{node.name}_reduce"))
            else:
                new = ir.node(
                    op, [x], attributes={"axes": pooled, "keepdims": 1}, name=new_name(graph, f"{node.name}_reduce")
                )
        graph.insert_before(node, new)
        replace_value(graph, node.outputs[0], new.outputs[0])
        graph.remove(node, safe=True)
        return (
            f"{finding.node}: {node.op_type} kernel {list(_ints(node, 'kernel_shape', []))} -> {op} over axes {pooled}"
        )


RULES: list[Rule] = [WholeAxisPooling()]
