"""The shapes a user gave, checked against the model's inputs before anything runs.

Every command that takes ``--range``, ``--export-shape``, ``--input``, ``--min/--opt/--max``,
``--shape`` or ``--shapes`` parses them with :mod:`dynashape.shapes` and then calls
:func:`validate_shapes` with the model's (or the engine's) declared inputs: an unknown name, a
rank that differs from the input's, a size that contradicts a static dim, or a sweep whose
largest shape cannot fit in this machine's memory is refused here with one line, instead of an
``IndexError`` or a 200 GiB allocation somewhere downstream.

:func:`ort_unsupported_nodes` names the nodes ONNX Runtime cannot run (custom-domain ops), for
the commands that run the model in it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from dynashape.errors import DynashapeError
from dynashape.model import graph_inputs
from dynashape.shapes import RangeMap, Shape, ShapeMap, format_shape

log = logging.getLogger(__name__)

Dim = int | None  # int: fixed in the model, None: dynamic (named or unknown)

# Random inputs are drawn in float64 (or int64) and then cast (dynashape.feeds.random_feeds,
# bench.random_inputs): a run at a shape holds at least the input plus that 8-byte draw, before the
# runtime allocates one activation. A lower bound, so a sweep refused by it cannot have fitted.
DRAW_ITEMSIZE = 8


@dataclass(frozen=True)
class DeclaredInput:
    """An input as the model or engine declares it: a fixed size or None per axis."""

    name: str
    dims: tuple[Dim, ...]
    itemsize: int = 4

    @property
    def rank(self) -> int:
        return len(self.dims)

    def describe(self) -> str:
        return "x".join("?" if d is None else str(d) for d in self.dims)


def model_inputs(model: onnx.ModelProto) -> list[DeclaredInput]:
    """The model's real inputs (initializers listed as inputs left out)."""
    out = []
    for info in graph_inputs(model):
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type).itemsize
        except (KeyError, TypeError, ValueError):  # an undefined or exotic element type
            itemsize = 4
        out.append(DeclaredInput(info.name, tuple(d if isinstance(d, int) else None for d in info.dims), itemsize))
    return out


def engine_inputs(tensors: Iterable[Any]) -> list[DeclaredInput]:
    """The inputs of an engine's sidecar (``TensorInfo``: name, dtype, shape with -1 for dynamic)."""
    import numpy as np

    out = []
    for t in tensors:
        name, dtype, shape = t.name, t.dtype, t.shape
        try:
            itemsize = int(np.dtype(dtype).itemsize)
        except TypeError:
            itemsize = 4
        out.append(DeclaredInput(name, tuple(None if int(d) < 0 else int(d) for d in shape), itemsize))
    return out


def undeclared_inputs(shapes: ShapeMap, itemsize: int = 4) -> list[DeclaredInput]:
    """Inputs known only from the shapes given (a PyTorch module before its export): all dynamic."""
    return [DeclaredInput(name, (None,) * len(shape), itemsize) for name, shape in shapes.items()]


def _by_name(inputs: Sequence[DeclaredInput], name: str, option: str) -> DeclaredInput:
    for info in inputs:
        if info.name == name:
            return info
    names = ", ".join(i.name for i in inputs) or "none"
    raise DynashapeError(f"{option}: {name!r} is not an input of the model (its inputs: {names})")


def _check_rank(info: DeclaredInput, rank: int, text: str, option: str, what: str = "size") -> None:
    if rank != info.rank:
        raise DynashapeError(
            f"{option} {info.name}:{text} has {rank} axes, but input {info.name!r} has {info.rank} "
            f"({info.describe()}); give one {what} per axis"
        )


def check_shape(inputs: Sequence[DeclaredInput], name: str, shape: Shape, option: str) -> None:
    """``shape`` for input ``name``: known name, same rank, equal to every static dim."""
    info = _by_name(inputs, name, option)
    _check_rank(info, len(shape), format_shape(shape), option)
    for axis, (declared, size) in enumerate(zip(info.dims, shape)):
        if declared is not None and declared != size:
            raise DynashapeError(
                f"{option} {name}:{format_shape(shape)}: axis {axis} is fixed at {declared} in the model "
                f"({info.describe()}), not {size}"
            )


def check_ranges(inputs: Sequence[DeclaredInput], ranges: RangeMap, option: str = "--range") -> None:
    """Each range: known name, same rank, a static axis given as exactly its size."""
    for name, rng in ranges.items():
        info = _by_name(inputs, name, option)
        _check_rank(info, len(rng.axes), str(rng), option, "size or range")
        for axis, (declared, ar) in enumerate(zip(info.dims, rng.axes)):
            if declared is not None and not (ar.fixed and ar.min == declared):
                raise DynashapeError(
                    f"{option} {name}:{rng}: axis {axis} is fixed at {declared} in the model "
                    f"({info.describe()}), so the range cannot give it {ar}; write {declared} there"
                )


def input_bytes(inputs: Sequence[DeclaredInput], shapes: ShapeMap) -> int:
    """The bytes of the given inputs at ``shapes`` (inputs without a shape count as empty)."""
    sizes = {i.name: i.itemsize for i in inputs}
    return sum(math.prod(shape) * sizes.get(name, 4) for name, shape in shapes.items())


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _gib(n: float) -> str:
    if n >= 2**40:
        return f"{n / 2**40:.1f} TiB"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def run_bytes(inputs: Sequence[DeclaredInput], shapes: ShapeMap) -> int:
    """A lower bound of the memory a run at ``shapes`` takes: every input, and the largest one's
    random draw (inputs are drawn one after the other, each draw freed once cast)."""
    counts = [math.prod(shape) for shape in shapes.values()]
    return input_bytes(inputs, shapes) + max(counts, default=0) * DRAW_ITEMSIZE


def check_memory(
    inputs: Sequence[DeclaredInput], largest: ShapeMap, option: str, limit: int | None = None
) -> None:
    """Refuse a run whose largest shape needs more memory than the machine has (``limit``: its RAM)."""
    limit = physical_memory() if limit is None else limit
    if not limit:
        return
    need = run_bytes(inputs, largest)
    if need <= limit:
        return
    where = ",".join(f"{n}:{format_shape(s)}" for n, s in largest.items())
    raise DynashapeError(
        f"{option}: at its largest shape {where} the inputs alone take {_gib(input_bytes(inputs, largest))} "
        f"and running there needs more than {_gib(need)}, over this machine's {_gib(limit)} of memory; "
        "narrow the range: a smaller max on its dynamic axes"
    )


def largest_of_ranges(ranges: RangeMap) -> ShapeMap:
    return {name: rng.max_shape for name, rng in ranges.items()}


def validate_shapes(
    inputs: Sequence[DeclaredInput],
    *,
    ranges: Mapping[str, RangeMap | None] | None = None,
    shapes: Mapping[str, ShapeMap | Sequence[ShapeMap] | None] | None = None,
    runs: bool = True,
    memory_limit: int | None = None,
) -> None:
    """Check every shape option of one command against the model's inputs.

    ``ranges`` and ``shapes`` map the option's name (for the message, e.g. ``"--range"``) to what
    was parsed from it (None: not given). ``runs``: the command executes the model at these shapes,
    so their memory is checked too.
    """
    for option, rng in (ranges or {}).items():
        if rng:
            check_ranges(inputs, rng, option)
            if runs:
                check_memory(inputs, largest_of_ranges(rng), option, memory_limit)
    for option, given in (shapes or {}).items():
        if not given:
            continue
        maps = [given] if isinstance(given, Mapping) else list(given)
        for shape_map in maps:
            for name, shape in shape_map.items():
                check_shape(inputs, name, shape, option)
        if runs:
            biggest = max(maps, key=lambda m: run_bytes(inputs, m))
            check_memory(inputs, biggest, option, memory_limit)


def validate_model_shapes(
    model: onnx.ModelProto,
    *,
    ranges: Mapping[str, RangeMap | None] | None = None,
    shapes: Mapping[str, ShapeMap | Sequence[ShapeMap] | None] | None = None,
    runs: bool = True,
) -> None:
    """:func:`validate_shapes` against an ONNX model's inputs."""
    validate_shapes(model_inputs(model), ranges=ranges, shapes=shapes, runs=runs)


# ONNX Runtime's own op domains with model-local functions: anything else needs a custom-op library.
def _ort_ops() -> set[tuple[str, str]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return {(s.domain, s.name) for s in ort_state.get_all_operator_schema()}


def _nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


@dataclass(frozen=True)
class UnsupportedNode:
    node: str
    domain: str
    op_type: str

    def __str__(self) -> str:
        return f"{self.node or '(unnamed)'} ({self.domain}::{self.op_type})"


def ort_unsupported_nodes(model: onnx.ModelProto) -> list[UnsupportedNode]:
    """Nodes whose op neither ONNX Runtime nor a function of the model defines."""
    known = _ort_ops() | {(f.domain, f.name) for f in model.functions}
    out = []
    for node in _nodes(model.graph):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        if (domain, node.op_type) not in known:
            out.append(UnsupportedNode(node.name, node.domain, node.op_type))
    return out


def require_ort_runnable(model: onnx.ModelProto, command: str, where: str = "") -> None:
    """Refuse, in one line, a model with ops ONNX Runtime cannot run (``command`` runs it there;
    ``where``: the model's file, for the message)."""
    bad = ort_unsupported_nodes(model)
    if not bad:
        return
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    of = f" of {where}" if where else ""
    raise DynashapeError(
        f"node {bad[0]}{more}{of} is a custom op that ONNX Runtime cannot run, and {command} runs the model in "
        "ONNX Runtime; `dynashape check` still analyses the graph around it"
    )
