"""A small mutation fuzzer for the ONNX loader and `check`: seed models, mutators, an oracle.

A case is (seed model, case number): the case number seeds a ``random.Random`` that picks one to
three mutations and their arguments, so every case replays exactly from its two names
(``python -m tests.fuzz_onnx SEED CASE``). The oracle: loading the mutated file and checking it
either succeed or raise ``DynashapeError`` (the CLI's exit 2); anything else is a bug. The file
written for a case is hashed before and after: dynashape never changes its input.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Mutator = Callable[[onnx.ModelProto, random.Random], str]

DEMO = Path(__file__).resolve().parents[1] / "src" / "dynashape" / "demo" / "demo.onnx"


# ------------------------------------------------------------------------------------- seeds


@cache
def seeds() -> dict[str, bytes]:
    """The corpus: the demo and small test models covering each rule family (serialized)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import models as M
    import models_generated as G
    import models_reports as R

    built: dict[str, onnx.ModelProto] = {
        "resize_skip": M.resize_skip(32, 32),
        "strip_pool": M.strip_pool(32, 32),
        "unet": M.unet(3),
        "reshape_baked": M.reshape_baked(4, 16, 16),
        "window_partition": M.window_partition(),
        "yolo_grid": G.yolo_grid(8, 8),
        "custom_domain": R.custom_domain(),
        "if_on_width": R.if_on_width(),
        "slice_axes": R.slice_axes(),
    }
    out = {"demo": DEMO.read_bytes()}
    out.update({name: m.SerializeToString() for name, m in built.items()})
    return out


# ------------------------------------------------------------------------------------- mutators

_ELEM_TYPES = [*range(0, 26), 26, 40, 255, -1]
_ODD_INTS = [0, -1, 1, 2, 3, 7, 32, 2**31 - 1, 2**31, 2**40, -(2**40), 2**62, 2**63 - 1, -(2**63)]


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = model.graph
    return [*g.input, *g.output, *g.value_info]


def _all_names(model: onnx.ModelProto) -> list[str]:
    names = [n for node in model.graph.node for n in (*node.input, *node.output) if n]
    names += [vi.name for vi in model.graph.input] + [t.name for t in model.graph.initializer]
    return names or ["x"]


def m_elem_type(model: onnx.ModelProto, rng: random.Random) -> str:
    vi = rng.choice(_value_infos(model))
    t = rng.choice(_ELEM_TYPES)
    vi.type.tensor_type.elem_type = t
    return f"elem_type of {vi.name!r} := {t}"


def m_dim(model: onnx.ModelProto, rng: random.Random) -> str:
    vi = rng.choice(_value_infos(model))
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        vi.type.tensor_type.shape.dim.add().dim_value = 1
        return f"dims of {vi.name!r}: added one"
    k = rng.randrange(len(dims))
    choice = rng.randrange(4)
    if choice == 0:
        v = rng.choice(_ODD_INTS)
        try:
            dims[k].dim_value = v
        except ValueError:
            dims[k].dim_value = 0
        return f"dim {k} of {vi.name!r} := {dims[k].dim_value}"
    if choice == 1:
        dims[k].Clear()
        return f"dim {k} of {vi.name!r} cleared"
    if choice == 2:
        del dims[k]
        return f"dim {k} of {vi.name!r} removed"
    dims.add().dim_param = "extra"
    return f"dims of {vi.name!r}: appended 'extra'"


def m_dim_param(model: onnx.ModelProto, rng: random.Random) -> str:
    vi = rng.choice(_value_infos(model))
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return "dim_param: no dims"
    k = rng.randrange(len(dims))
    p = rng.choice(["", "N", "H", "W", "batch", "height", "x y", "²²⁴", "ä", "0", "-1", "a" * 300])
    dims[k].dim_param = p
    return f"dim_param {k} of {vi.name!r} := {p[:20]!r}"


def m_value_info(model: onnx.ModelProto, rng: random.Random) -> str:
    name = rng.choice(_all_names(model))
    rank = rng.randrange(0, 7)
    dims: list[int | str | None] = [rng.choice([1, 2, 3, 32, 0, "N", None]) for _ in range(rank)]
    elem = rng.choice([TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT16, TensorProto.BOOL])
    model.graph.value_info.append(helper.make_tensor_value_info(name, elem, dims))
    return f"value_info {name!r} := {elem}:{dims}"


def _mutate_tensor(t: onnx.TensorProto, rng: random.Random) -> str:
    choice = rng.randrange(7)
    if choice == 0 and t.dims:
        k = rng.randrange(len(t.dims))
        t.dims[k] = rng.choice([0, 1, 2, 3, 64, 2**20, -1])
        return f"dims[{k}] := {t.dims[k]}"
    if choice == 1:
        t.dims.append(rng.choice([1, 2, 5]))
        return "dims appended"
    if choice == 2:
        t.data_type = rng.choice(_ELEM_TYPES[:26])
        return f"data_type := {t.data_type}"
    if choice == 3 and t.raw_data:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
        return "raw_data truncated"
    if choice == 4:
        try:
            arr = numpy_helper.to_array(t)
        except Exception:
            return "values: unreadable, left"
        if arr.dtype.kind in "iu" and arr.size:
            flat = arr.reshape(-1).copy()
            flat[rng.randrange(flat.size)] = rng.choice([0, -1, 2**31, -(2**40), 2**62, 5, 31])
            t.CopyFrom(numpy_helper.from_array(flat.reshape(arr.shape).astype(arr.dtype), t.name))
            return "one integer value changed"
        if arr.dtype.kind == "f" and arr.size:
            flat = arr.reshape(-1).copy()
            flat[rng.randrange(flat.size)] = rng.choice([np.nan, np.inf, -np.inf, 0.0, 1e30])
            t.CopyFrom(numpy_helper.from_array(flat.reshape(arr.shape), t.name))
            return "one float value changed"
        return "values: empty, left"
    if choice == 5:
        del t.dims[:]
        return "dims cleared (scalar)"
    t.CopyFrom(numpy_helper.from_array(np.zeros((0,), np.int64), t.name))
    return "emptied"


def m_initializer(model: onnx.ModelProto, rng: random.Random) -> str:
    inits = model.graph.initializer
    if not inits:
        return "initializer: none"
    t = rng.choice(inits)
    return f"initializer {t.name!r}: {_mutate_tensor(t, rng)}"


def _constants(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Constant"]


def m_constant(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = _constants(model)
    if not nodes:
        return "constant: none"
    node = rng.choice(nodes)
    choice = rng.randrange(3)
    if choice == 0 and node.attribute and node.attribute[0].HasField("t"):
        return f"Constant {node.name!r}: {_mutate_tensor(node.attribute[0].t, rng)}"
    del node.attribute[:]
    if choice == 1:
        kind = rng.choice(["value_ints", "value_int", "value_float", "value_floats", "value_string"])
        value: object = {"value_ints": [rng.choice(_ODD_INTS[:8]) for _ in range(rng.randrange(0, 5))],
                         "value_int": rng.choice(_ODD_INTS), "value_float": 1.5,
                         "value_floats": [0.5, 2.0], "value_string": "abc"}[kind]
        types = {"value_ints": onnx.AttributeProto.INTS, "value_floats": onnx.AttributeProto.FLOATS}
        node.attribute.append(helper.make_attribute(kind, value, attr_type=types.get(kind)))
        return f"Constant {node.name!r}: {kind} := {value}"
    arr = np.asarray(rng.choice([[[1, 2], [3, 4]], [], [1.5, 2.5], 7, [True, False]]))
    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(arr)))
    return f"Constant {node.name!r}: value := {arr.tolist()}"


def m_attribute(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = [n for n in model.graph.node if n.attribute and n.op_type != "Constant"]
    if not nodes:
        return "attribute: none"
    node = rng.choice(nodes)
    k = rng.randrange(len(node.attribute))
    attr = node.attribute[k]
    choice = rng.randrange(5)
    if choice == 0 and attr.ints:
        j = rng.randrange(len(attr.ints))
        attr.ints[j] = rng.choice(_ODD_INTS[:10])
        return f"{node.name}.{attr.name}[{j}] := {attr.ints[j]}"
    if choice == 1:
        del node.attribute[k]
        return f"{node.name}.{attr.name} removed"
    if choice == 2:
        name = attr.name
        new = rng.choice([helper.make_attribute(name, 1.5), helper.make_attribute(name, "s"),
                          helper.make_attribute(name, [1, 2, 3, 4, 5]), helper.make_attribute(name, 3)])
        node.attribute[k].CopyFrom(new)
        return f"{node.name}.{name} := type {new.type}"
    if choice == 3 and attr.type == onnx.AttributeProto.INT:
        attr.i = rng.choice(_ODD_INTS)
        return f"{node.name}.{attr.name} := {attr.i}"
    if choice == 3 and attr.type == onnx.AttributeProto.STRING:
        attr.s = rng.choice([b"", b"cubic", b"linear", b"bogus", b"SAME_UPPER", b"half_pixel"])
        return f"{node.name}.{attr.name} := {attr.s!r}"
    node.attribute.append(helper.make_attribute(rng.choice(["axis", "bogus", "mode"]), rng.choice([0, -1, 5])))
    return f"{node.name}: attribute added"


_OPS = ["Relu", "Identity", "Add", "Concat", "Resize", "Reshape", "Slice", "AveragePool", "MaxPool", "Conv",
        "Shape", "Gather", "Expand", "Pad", "Transpose", "Split", "Tile", "Mul", "If", "Loop", "NoSuchOp",
        "Cast", "Squeeze", "Unsqueeze", "ReduceMean", "ConstantOfShape", "Range", "TopK", "Softmax", "Constant"]


def m_op_type(model: onnx.ModelProto, rng: random.Random) -> str:
    node = rng.choice(model.graph.node)
    old, node.op_type = node.op_type, rng.choice(_OPS)
    return f"op_type of {node.name!r}: {old} -> {node.op_type}"


def m_domain(model: onnx.ModelProto, rng: random.Random) -> str:
    node = rng.choice(model.graph.node)
    domain = rng.choice(["com.example", "com.microsoft", "ai.onnx.ml", "ai.onnx", "", "bogus.domain"])
    node.domain = domain
    if rng.random() < 0.7 and domain not in ("", "ai.onnx"):
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return f"domain of {node.name!r} := {domain!r}"


def m_opset(model: onnx.ModelProto, rng: random.Random) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        del model.opset_import[:]
        return "opset_import removed"
    if choice == 1:
        model.ir_version = rng.choice([0, 1, 3, 4, 7, 8, 9, 10, 11, 99])
        return f"ir_version := {model.ir_version}"
    v = rng.choice([1, 7, 9, 10, 11, 12, 13, 16, 18, 19, 20, 21, 22, 23, 99, 1000])
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = v
    if choice == 3:
        model.opset_import.append(helper.make_opsetid("", rng.choice([11, 18])))
        return f"default opset := {v} and a second default import"
    return f"default opset := {v}"


def m_io(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    choice = rng.randrange(6)
    if choice == 0 and g.input:
        name = g.input[0].name
        del g.input[0]
        return f"graph input {name!r} removed"
    if choice == 1 and g.output:
        name = g.output[-1].name
        del g.output[-1]
        return f"graph output {name!r} removed"
    if choice == 2 and g.input:
        g.input[0].name = rng.choice(["renamed", "", g.output[0].name if g.output else "o"])
        return f"graph input renamed {g.input[0].name!r}"
    if choice == 3 and g.output:
        g.output[0].name = rng.choice(["renamed", "", g.input[0].name if g.input else "x"])
        return f"graph output renamed {g.output[0].name!r}"
    if choice == 4 and g.input:
        g.input.append(g.input[0])
        return "graph input duplicated"
    g.input.append(helper.make_tensor_value_info("extra_in", TensorProto.FLOAT, ["N", 3, "H", "W"]))
    return "extra graph input"


def m_edge(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = [n for n in model.graph.node if n.input]
    if not nodes:
        return "edge: none"
    node = rng.choice(nodes)
    k = rng.randrange(len(node.input))
    new = rng.choice(["", "dangling", rng.choice(_all_names(model)), node.output[0] if node.output else ""])
    node.input[k] = new
    return f"{node.name}.input[{k}] := {new!r}"


def m_node_output(model: onnx.ModelProto, rng: random.Random) -> str:
    node = rng.choice(model.graph.node)
    if not node.output:
        return "node output: none"
    new = rng.choice(["", "renamed_out", rng.choice(_all_names(model))])
    node.output[0] = new
    return f"{node.name}.output[0] := {new!r}"


def m_duplicate(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    k = rng.randrange(len(g.node))
    copy = onnx.NodeProto()
    copy.CopyFrom(g.node[k])
    if rng.random() < 0.5:
        copy.output[:] = [f"{o}_dup" for o in copy.output]
    g.node.insert(k + 1, copy)
    return f"node {copy.name!r} duplicated"


def m_remove_node(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    if len(g.node) < 2:
        return "remove node: too few"
    k = rng.randrange(len(g.node))
    name = g.node[k].name
    del g.node[k]
    return f"node {name!r} removed"


def m_reorder(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    nodes = list(g.node)
    i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
    nodes[i], nodes[j] = nodes[j], nodes[i]
    del g.node[:]
    g.node.extend(nodes)
    return f"nodes {i} and {j} swapped"


def m_node_name(model: onnx.ModelProto, rng: random.Random) -> str:
    node = rng.choice(model.graph.node)
    node.name = rng.choice(["", model.graph.node[0].name, "x" * 500, "a/b\\c\n", "[bold]"])
    return f"node name := {node.name[:20]!r}"


def m_metadata(model: onnx.ModelProto, rng: random.Random) -> str:
    value = rng.choice(["x:1x4x32x32", "x:0x4x32x32", "x:1x4", "garbage", "x:1x4x99999999999x32", "y:1x3",
                        "input:1x3x512x512", "input:2x3x64x64", "input:1x3x1x1"])
    entry = model.metadata_props.add()
    entry.key, entry.value = "dynashape.export_shape", value
    return f"export_shape metadata := {value!r}"


def m_sparse(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    if not g.initializer:
        return "sparse: none"
    t = rng.choice(g.initializer)
    if rng.random() < 0.5:
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", rng.choice(["missing.bin", "../../etc/passwd", ""])
        return f"initializer {t.name!r} made external"
    t.segment.begin, t.segment.end = 0, 1
    return f"initializer {t.name!r} given a segment"


def splice_after(model: onnx.ModelProto, pos: int, domain: str, op_type: str, name: str) -> None:
    """Insert a one-in one-out ``domain::op_type`` node on the first output of node ``pos``: its
    consumers (and a graph output of that name) read the new node's output instead."""
    g = model.graph
    value = g.node[pos].output[0]
    new = f"{value}_custom"
    for other in g.node:
        other.input[:] = [new if i == value else i for i in other.input]
    for out in g.output:
        if out.name == value:
            out.name = new
    g.node.insert(pos + 1, helper.make_node(op_type, [value], [new], name=name, domain=domain))
    if domain not in {i.domain for i in model.opset_import}:
        model.opset_import.append(helper.make_opsetid(domain, 1))


def m_insert_custom(model: onnx.ModelProto, rng: random.Random) -> str:
    """A one-in one-out op ONNX inference does not know, spliced into an edge (or a graph output)."""
    g = model.graph
    node = rng.choice([n for n in g.node if n.output] or [g.node[0]])
    if not node.output:
        return "insert custom: no output"
    domain, op = rng.choice([("com.example", "MyOp"), ("com.microsoft", "FusedConv"), ("com.microsoft", "Gelu"),
                             ("com.example", "Reshape")])
    splice_after(model, list(g.node).index(node), domain, op, f"custom_{node.output[0]}")
    return f"{domain}::{op} inserted after {node.name!r}"


MUTATORS: dict[str, Mutator] = {
    "insert_custom": m_insert_custom,
    "elem_type": m_elem_type, "dim": m_dim, "dim_param": m_dim_param, "value_info": m_value_info,
    "initializer": m_initializer, "constant": m_constant, "attribute": m_attribute, "op_type": m_op_type,
    "domain": m_domain, "opset": m_opset, "io": m_io, "edge": m_edge, "node_output": m_node_output,
    "duplicate": m_duplicate, "remove_node": m_remove_node, "reorder": m_reorder, "node_name": m_node_name,
    "metadata": m_metadata, "external": m_sparse,
}


# ------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    seed: str
    number: int
    mutations: tuple[str, ...]
    data: bytes

    @property
    def replay(self) -> str:
        return f"python -m tests.fuzz_onnx {self.seed} {self.number}"


def make_case(seed: str, number: int) -> Case:
    rng = random.Random(f"{seed}:{number}")
    model = onnx.ModelProto()
    model.ParseFromString(seeds()[seed])
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        name = rng.choice(sorted(MUTATORS))
        try:
            done.append(f"{name}: {MUTATORS[name](model, rng)}")
        except IndexError:  # rng.choice([]): an earlier mutation left nothing of the kind to mutate
            done.append(f"{name}: nothing to mutate")
    return Case(seed, number, tuple(done), model.SerializeToString())


@dataclass(frozen=True)
class Outcome:
    case: Case
    result: str  # "ok", "guarded: <note>", "refused: <one line>" or "CRASH"
    traceback: str = ""


def run_case(case: Case, directory: Path, *, cli: bool = False) -> Outcome:
    """Load and check the case's file: success and DynashapeError pass, anything else is a crash."""
    from dynashape.errors import DynashapeError
    from dynashape.model import load_model, read_export_shape
    from dynashape.pipeline.check import UNREADABLE, check_model

    path = directory / f"{case.seed}-{case.number}.onnx"
    path.write_bytes(case.data)
    before = hashlib.sha256(case.data).hexdigest()
    try:
        try:
            model = load_model(path)
            report = check_model(model, export_shape=read_export_shape(model), path=str(path))
            if cli:
                from dynashape.cli import main

                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    rc = main(["check", str(path), "--json"])
                if rc not in (0, 1, 2):
                    return Outcome(case, "CRASH", f"cli check exited {rc}")
            # a rule that met a node it cannot read refuses it with a note (see check.UNREADABLE):
            # not a crash, but worth a look
            guarded = [n for n in report.notes if UNREADABLE in n]
            result = f"guarded: {guarded[0]}" if guarded else "ok"
        except DynashapeError as exc:
            result = f"refused: {exc}"
            if "\n" in str(exc).strip():
                return Outcome(case, "CRASH", f"DynashapeError of several lines: {exc!r}")
        except RecursionError:
            return Outcome(case, "CRASH", traceback.format_exc(limit=-8))
        except Exception:
            return Outcome(case, "CRASH", traceback.format_exc())
        if hashlib.sha256(path.read_bytes()).hexdigest() != before:
            return Outcome(case, "CRASH", "the input file was changed")
        return Outcome(case, result)
    finally:
        path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """Replay one case: ``python -m tests.fuzz_onnx SEED CASE``."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    seed, number = argv[0], int(argv[1])
    case = make_case(seed, number)
    print(f"{seed} {number}: " + "; ".join(case.mutations))
    with tempfile.TemporaryDirectory() as tmp:
        out = run_case(case, Path(tmp), cli=True)
    print(out.result)
    if out.traceback:
        print(out.traceback)
    return 1 if out.result == "CRASH" else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
