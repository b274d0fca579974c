"""dynashape's model for Triton's Python backend (copied into ``REPO/NAME/1/model.py``).

It serves the files beside it (named in ``config.pbtxt``'s parameters): the TensorRT engine
through ``dynashape.trt.engine.Engine`` (which picks, per shape, the profile measured fastest) where
``tensorrt`` imports and a GPU answers, else the ONNX model with ONNX Runtime on CPU. Set
``DYNASHAPE_TRITON_RUNTIME=onnxruntime|tensorrt`` in the server's environment to force one.

A request whose shape is off the model's valid-size lattice (``dynashape.analysis.lattice``) is answered
with an error saying which sizes are valid, not run. With Triton batching (``max_batch_size``
> 0) the requests of one ``execute`` call that share a shape are run as one batch.

Needs numpy and onnxruntime in Triton's Python (and dynashape, tensorrt, cuda-bindings for the
engine). Under numpy 2, tensors cross through DLPack both ways: ``as_numpy()`` and
``Tensor(name, array)`` of Triton releases built against numpy 1 read numpy 2 arrays wrongly
(zeros, empty outputs). Under numpy 1 they are the safe way (there, handing numpy's DLPack capsule
to those releases crashes the stub).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, documentation)
    pb_utils = None

RUNTIME_ENV = "DYNASHAPE_TRITON_RUNTIME"
NUMPY_2 = int(np.__version__.split(".")[0]) >= 2
ORT_THREADS_ENV = "DYNASHAPE_ORT_THREADS"


def _log(message: str, error: bool = False) -> None:
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        (logger.log_error if error else logger.log_info)(message)
    else:
        print(message, flush=True)


def off_lattice(
    shapes: Mapping[str, Sequence[int]], lattice: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> str | None:
    """Why ``shapes`` is off the valid-size lattice (as ``dynashape.analysis.lattice`` writes it), or None."""
    for name, axes in lattice.items():
        shape = shapes.get(name)
        if shape is None:
            continue
        for axis_text, lat in axes.items():
            axis = int(axis_text)
            if axis >= len(shape):
                continue
            size, lo, step = int(shape[axis]), int(lat["min"]), int(lat["multiple"])
            if size < lo or (size - lo) % step:
                valid = ", ".join(str(lo + k * step) for k in range(3))
                if size < lo:
                    near = str(lo)
                else:
                    below = lo + (size - lo) // step * step
                    near = f"{below} or {below + step}"
                return (f"input {name!r} axis {axis} is {size}: the model is only correct at {valid}, ... (from {lo} "
                        f"in steps of {step}); pad or resize to {near}")
    return None


class _OrtRunner:
    def __init__(self, path: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        threads = int(os.environ.get(ORT_THREADS_ENV, "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.label = f"ONNX Runtime {ort.__version__} on CPU ({os.path.basename(path)})"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, dict(feeds))))

    def close(self) -> None:
        self.session = None


class _EngineRunner:
    def __init__(self, path: str) -> None:
        from dynashape.trt.engine import Engine

        self.engine = Engine.load(path)
        info = self.engine.info
        where = f", TensorRT {info.tensorrt_version}" if info is not None else ""
        plan = " with its measured profile plan" if info is not None and info.plan is not None else ""
        self.label = f"TensorRT engine {os.path.basename(path)}{where}, {len(self.engine.profiles)} profile(s){plan}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.infer(feeds)

    def close(self) -> None:
        self.engine.close()


def _tensorrt_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def _as_array(tensor: Any) -> np.ndarray:
    if NUMPY_2:
        try:
            return np.array(np.from_dlpack(tensor), copy=True)
        except (AttributeError, TypeError, BufferError, RuntimeError, ValueError):
            pass  # a tensor without DLPack (strings): as_numpy is all there is
    return np.array(tensor.as_numpy(), copy=True)


def _quiet_used_capsule(unraisable: Any) -> None:
    """Older Python backends rename a consumed DLPack capsule to ``used_dlpack`` (not DLPack's
    ``used_dltensor``), so numpy's capsule destructor reports a harmless error per output."""
    if "PyCapsule_GetPointer called with incorrect name" not in str(unraisable.exc_value):
        sys.__unraisablehook__(unraisable)


def _output_tensor(name: str, array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array)
    if not NUMPY_2:
        return pb_utils.Tensor(name, array)
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_used_capsule
    try:
        return pb_utils.Tensor.from_dlpack(name, array.__dlpack__())
    finally:
        sys.unraisablehook = hook


class TritonPythonModel:
    """The Python backend's entry point: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: Mapping[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        here = os.path.join(args["model_repository"], str(args["model_version"]))
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = {t["name"]: _numpy_dtype(t["data_type"]) for t in config["output"]}
        self.lattice = json.loads(params["dynashape.lattice"]) if params.get("dynashape.lattice") else {}
        self.runner = self._runner(here, params, os.environ.get(RUNTIME_ENV, "auto"))
        _log(f"dynashape: model {config.get('name')!r} instance {args.get('model_instance_name')} serves "
             f"{self.runner.label}")

    @staticmethod
    def _runner(here: str, params: Mapping[str, str], runtime: str) -> Any:
        engine = os.path.join(here, params["dynashape.engine"]) if params.get("dynashape.engine") else None
        onnx = os.path.join(here, params["dynashape.onnx"]) if params.get("dynashape.onnx") else None
        if runtime not in ("auto", "tensorrt", "onnxruntime"):
            raise ValueError(f"{RUNTIME_ENV}={runtime!r}: use auto, tensorrt or onnxruntime")
        if engine and runtime in ("auto", "tensorrt") and (runtime == "tensorrt" or _tensorrt_importable()):
            try:
                return _EngineRunner(engine)
            except Exception as exc:
                if runtime == "tensorrt" or not onnx:
                    raise
                _log(f"dynashape: the engine does not load here ({exc}); serving the ONNX model on CPU", error=True)
        if onnx and runtime in ("auto", "onnxruntime"):
            return _OrtRunner(onnx)
        raise ValueError(
            f"nothing to serve with runtime {runtime!r}: engine {engine or 'none'}, ONNX model {onnx or 'none'} "
            "(an engine needs tensorrt in Triton's Python)"
        )

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            feeds = {}
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    responses[index] = _error(f"no value for input {name!r}")
                    break
                feeds[name] = _as_array(tensor)
            if responses[index] is not None:
                continue
            problem = off_lattice({n: a.shape for n, a in feeds.items()}, self.lattice)
            if problem:
                responses[index] = _error(problem)
                continue
            skip = 1 if self.max_batch_size > 0 else 0
            key = tuple((n, a.shape[skip:], a.dtype.str) for n, a in feeds.items())
            groups.setdefault(key, []).append((index, feeds))
        for members in groups.values():
            if len(members) == 1 or self.max_batch_size == 0:
                for index, feeds in members:
                    responses[index] = self._run(feeds)
                continue
            sizes = [next(iter(feeds.values())).shape[0] for _, feeds in members]
            batched = {n: np.concatenate([feeds[n] for _, feeds in members]) for n in self.inputs}
            try:
                outputs = self.runner.run(batched)
            except Exception as exc:
                for index, _ in members:
                    responses[index] = _error(str(exc))
                continue
            start = 0
            for (index, _), size in zip(members, sizes):
                responses[index] = self._response({n: a[start:start + size] for n, a in outputs.items()})
                start += size
        return responses

    def _run(self, feeds: Mapping[str, np.ndarray]) -> Any:
        try:
            return self._response(self.runner.run(feeds))
        except Exception as exc:  # the runtime's own sentence (e.g. a shape outside every profile)
            return _error(str(exc))

    def _response(self, outputs: Mapping[str, np.ndarray]) -> Any:
        tensors = [
            _output_tensor(name, np.asarray(outputs[name], dtype=dtype))
            for name, dtype in self.outputs.items()
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


_DTYPES = {
    "TYPE_BOOL": "bool", "TYPE_UINT8": "uint8", "TYPE_UINT16": "uint16", "TYPE_UINT32": "uint32",
    "TYPE_UINT64": "uint64", "TYPE_INT8": "int8", "TYPE_INT16": "int16", "TYPE_INT32": "int32",
    "TYPE_INT64": "int64", "TYPE_FP16": "float16", "TYPE_FP32": "float32", "TYPE_FP64": "float64",
}


def _numpy_dtype(triton_type: str) -> np.dtype:
    return np.dtype(_DTYPES[triton_type])
