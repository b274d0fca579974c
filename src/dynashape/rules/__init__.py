"""The hazard rules. The default set is assembled here, in the order they run: resizes first
(a frozen resize hides every shape after its join), then padding (a frozen pad shifts every size
after it), pooling, splits and slices, reshapes, then frozen expands/tiles and the tensors
generated at the export size (they are judged by the dynamic axes of what they are joined with,
so those must be fixed first)."""

from __future__ import annotations

from dynashape.rules import (
    expand,
    generated,
    padding,
    pooling,
    reports,
    reshape,
    resize,
    slicing,
    trt_support,
)
from dynashape.rules.base import Rule

# DS016 folds constant-only subgraphs first (that freezes nothing) so later rules see initializers;
# the report-only rules run last, on the rewritten graph.
DEFAULT_RULES: list[Rule] = [
    *trt_support.RULES, *resize.RULES, *padding.RULES, *pooling.RULES, *slicing.RULES, *reshape.RULES,
    *expand.RULES, *generated.RULES, *reports.RULES,
]

# Rules that are not graph-node rules, listed for `check --list-rules`.
OTHER_RULES: dict[str, str] = {
    "DS003": "Stride-2 layers then upsampling and a join: valid only on a lattice of sizes (min, multiple)",
    "DS017": "Op without ONNX shape inference (custom domain, com.microsoft): the graph after it is unchecked",
}


def rule_catalogue() -> list[tuple[str, str]]:
    rows = [(r.id, r.title) for r in DEFAULT_RULES] + list(OTHER_RULES.items())
    return sorted(rows)
