"""What a rule reports: typed results shared by check, fix, doctor and the reports.

A finding says what is wrong for the user (its fields and ``details`` go into the JSON); a fixable
finding also carries the rule's :class:`RewritePlan`, what its rewrite needs, which never does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
DetectedBy = Literal["static", "lattice", "differential-export", "differential-run"]


@dataclass(frozen=True)
class RewritePlan:
    """What a rule's ``rewrite`` needs, decided by its ``check``: one frozen dataclass per rule
    (``PoolPlan``, ``ResizePlan``...). It names values and nodes rather than holding them: a
    rewrite earlier in the same round may replace a value, and the replacement takes its name."""


@dataclass
class Finding:
    """One hazard: which rule, which node, what was baked in, why it breaks and how to fix it.

    ``details``: facts about the hazard for the user and for tools reading the JSON (the axes
    pooled, the sizes baked in, what it meets at a join); ``plan``: the rewrite's plan, set on
    fixable findings of the rules that rewrite, never in the JSON."""

    rule: str
    severity: Severity
    node: str
    op: str
    message: str
    fixable: bool
    detected_by: DetectedBy = "static"
    inputs: list[str] = field(default_factory=list)
    baked_value: Any = None
    breaks_at: str = ""
    fix: str = ""
    source: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    plan: RewritePlan | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(dataclasses.replace(self, plan=None))
        del out["plan"]
        return out


@dataclass
class Refusal:
    """Why a rule did not fire on a node (or could not fix it): the reason is the product."""

    rule: str
    node: str
    reason: str


@dataclass
class AxisLattice:
    """Valid sizes of one dynamic axis: ``min``, ``min + multiple``, ``min + 2 * multiple``, ...
    (every multiple of ``multiple`` from ``min`` on when ``min`` is one)."""

    min: int
    multiple: int
    max_checked: int | None = None
    irregular: list[int] | None = None
    # why this lattice may be too wide (part of the graph was not analysed, see DS017); "" if whole
    partial: str = ""

    def contains(self, size: int) -> bool:
        # measured from min: an offset lattice ({3, 5, 7, ...}: odd sizes) has min % multiple != 0
        return size >= self.min and (size - self.min) % self.multiple == 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"min": self.min, "multiple": self.multiple}
        if self.irregular:
            out["irregular"] = self.irregular
        if self.partial:
            out["partial"] = self.partial
        return out


# input name -> axis index -> lattice
Lattice = dict[str, dict[int, AxisLattice]]


def lattice_to_json(lattice: Lattice) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        name: {str(axis): lat.to_json() for axis, lat in sorted(axes.items())}
        for name, axes in lattice.items()
    }
