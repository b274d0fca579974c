"""Where the rewrites happen: the rules run as passes over one working graph, rewriting what they fix.

Each rule is a pass (:class:`RulePass`): one round looks at every node of the rule's ops (``check``)
and rewrites the fixable findings (``rewrite``, through one :class:`RewriteBuilder` per round); after
a round that rewrote something the graph is re-probed. :class:`PassManager` runs the rules in order
and repeats each rule's pass until a round changes nothing, as onnx-ir's pass manager repeats its
passes: a rewrite can make the next hazard visible (a reshape that mixed the batch into the
channels hides the batch from the reshape after it). Rules run in order because a frozen resize
hides the true shapes of everything after its join.

``check`` runs the passes on a working copy to see the graph as the fixes leave it (its lattice is
the fixed model's); ``fix`` proves the rewritten model and writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from dynashape.analysis.context import Context, is_descendant
from dynashape.findings import Finding, Refusal
from dynashape.model import InputInfo
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder

log = logging.getLogger(__name__)

MAX_ROUNDS = 8  # rounds of one rule over the graph; another runs only after a rewrite
# what a node whose constants are not what the rule reads raises (or a bug): a refusal, never a crash
_MALFORMED = (ValueError, TypeError, IndexError, KeyError, ArithmeticError)
UNREADABLE = "could not analyse this node: its inputs or attributes are not what the rule reads"


@dataclass(frozen=True)
class RewritePolicy:
    """Which fixable findings a pass must not rewrite.

    ``export_shape_guessed``: S0 was not given nor found, so the rules that match baked constants
    against it (``needs_export_shape``) only report. ``exclude``: (rule id, node name) -> why that
    finding must not be rewritten (``fix`` rolls back a rewrite that made some shape worse this way)."""

    export_shape_guessed: bool = False
    exclude: Mapping[tuple[str, str], str] = field(default_factory=dict)
    shape_example: str = ""  # what --export-shape wants for this model, for the messages


@dataclass
class RoundResult:
    modified: bool  # something was rewritten: the graph must be re-probed
    deferred: bool  # findings waited for another round (see Rule.shadows_downstream)


class RulePass:
    """One rule over the graph, round after round. Nodes it rewrote are done; the others are
    looked at again, and the last round's verdict stands (an unfixable finding may become
    fixable, or go, once what is upstream of it was fixed)."""

    def __init__(self, rule: Rule, policy: RewritePolicy) -> None:
        self.rule = rule
        self.policy = policy
        self._verdicts: dict[str, Finding] = {}  # node -> finding, in the order first found
        self._refused: dict[str, Refusal] = {}
        self._done: set[str] = set()
        self.applied: list[str] = []

    @property
    def findings(self) -> list[Finding]:
        return list(self._verdicts.values())

    @property
    def refusals(self) -> list[Refusal]:
        return list(self._refused.values())

    def __call__(self, ctx: Context, *, last_round: bool = False) -> RoundResult:
        found, deferred = self._check(ctx, last_round)
        return RoundResult(self._rewrite(ctx, found), deferred)

    def _check(self, ctx: Context, last_round: bool) -> tuple[list[Finding], bool]:
        rule = self.rule
        found: list[Finding] = []
        deferred = False
        shadowing: list[ir.Node] = []  # see Rule.shadows_downstream
        for node in ctx.nodes(*rule.ops):
            key = node.name or f"#{id(node)}"
            if key in self._done:
                continue
            try:
                result = rule.check(ctx, node)
            except _MALFORMED as exc:
                # the loader refuses what the checker and strict inference can see; what is left is a
                # node whose constants are not what the rule reads (or a bug): never a crash of check
                log.warning("%s could not analyse node %r: %s: %s", rule.id, key, type(exc).__name__, exc,
                            exc_info=log.isEnabledFor(logging.DEBUG))
                result = rule.refuse(node, f"{UNREADABLE} ({type(exc).__name__}: {str(exc)[:200]})")
            if isinstance(result, Refusal):
                self._refused[key] = result
                self._verdicts.pop(key, None)
                continue
            if not last_round and any(
                    is_descendant(v, up) for up in shadowing for v in node.inputs if v is not None):
                deferred = True
                continue
            self._apply_policy(result)
            self._verdicts[key] = result
            self._refused.pop(key, None)
            if result.fixable:
                found.append(result)
                self._done.add(key)
                if rule.shadows_downstream(result):
                    shadowing.append(node)
        return found, deferred

    def _apply_policy(self, result: Finding) -> None:
        """Turn a fixable finding the policy forbids into a report saying why it was not rewritten."""
        rule, policy = self.rule, self.policy
        guessed = rule.needs_export_shape and policy.export_shape_guessed
        if result.fixable and guessed:
            result.fixable = False
            result.fix = (
                "not rewritten: the export shape is unknown and this fix depends on it; give it with "
                f"--export-shape {policy.shape_example} (the sizes it was exported at) or the PyTorch "
                f"module with --torch. It would {result.fix}"
            )
        elif guessed and not result.fixable:
            result.fix = (
                "not rewritten: the export shape is unknown and this rule matches baked constants against "
                f"it; give it with --export-shape (at the placeholder size: {result.fix})"
            )
        if result.fixable and (rule.id, result.node) in policy.exclude:
            result.fixable = False
            result.fix = f"not rewritten: {policy.exclude[(rule.id, result.node)]}. It would {result.fix}"

    def _rewrite(self, ctx: Context, found: list[Finding]) -> bool:
        builder = RewriteBuilder(ctx.model, ctx.proto)
        rewritten = False
        for finding in found:
            target = builder.find_node(finding.node)
            if target is None:
                continue
            if finding.plan is None:
                raise AssertionError(f"{self.rule.id} found {finding.node!r} fixable without a plan")
            self.applied.append(self.rule.rewrite(builder, target, finding.plan))
            if builder.pending:
                raise AssertionError(f"{self.rule.id} left new nodes out of the graph rewriting {finding.node!r}")
            rewritten = True
        return rewritten


@dataclass
class Rewritten:
    """What the passes found and did: the rules' verdicts, refusals and rewrites, and the model."""

    findings: list[Finding]
    refusals: list[Refusal]
    applied: list[str]
    model: onnx.ModelProto  # the context's model after the last rewrite (as it came when none was made)


class PassManager:
    """Runs each rule's pass until a round rewrites nothing (at most ``max_rounds``), rule after rule."""

    def __init__(self, rules: Sequence[Rule], policy: RewritePolicy | None = None,
                 max_rounds: int = MAX_ROUNDS) -> None:
        self.rules = list(rules)
        self.policy = policy or RewritePolicy()
        self.max_rounds = max_rounds

    def run(self, ctx: Context) -> Rewritten:
        """Rewrite ``ctx.model`` in place (``ctx`` is refreshed after every round that changed it)."""
        findings: list[Finding] = []
        refusals: list[Refusal] = []
        applied: list[str] = []
        for rule in self.rules:
            rule_pass = RulePass(rule, self.policy)
            for round_no in range(self.max_rounds):
                result = rule_pass(ctx, last_round=round_no == self.max_rounds - 1)
                if result.modified:
                    ctx.refresh()
                if not result.modified and not result.deferred:
                    break
            findings.extend(rule_pass.findings)
            refusals.extend(rule_pass.refusals)
            applied.extend(rule_pass.applied)
        return Rewritten(findings, refusals, applied, ctx.proto)


def shape_example(inputs: list[InputInfo]) -> str:
    """What --export-shape wants, in the model's own terms: ``x:Nx4xHxW``."""
    return ",".join(f"{i.name}:" + "x".join(str(d) if d is not None else "?" for d in i.dims) for i in inputs)
