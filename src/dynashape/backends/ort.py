"""ONNX Runtime (CPU) runner: the reference runtime and the CPU backend."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np
import onnx

from dynashape.backends import Runner
from dynashape.model import save_with_external_weights, serialized_size

log = logging.getLogger(__name__)

# A model whose weights pass this size reaches ONNX Runtime through a file with its weights as
# external data, not bytes, and without prepacked weights: from bytes, ORT holds the Python bytes,
# its parsed copy and its tensors at once (ViT-B/16's 330 MB: 1.08 GB peak; from a file 0.64 GB);
# prepacking keeps a second, packed copy of every MatMul/Conv weight (0.45 GB without it), for
# about 15% more time per run on that model.
_LARGE_MODEL_BYTES = 64 << 20

_NODE_IN_MESSAGE = re.compile(r"[Nn]ode \(([^)]+)\)|node name: ([^,\s)]+)|Name:'([^']+)'")


class RunError(Exception):
    """A model failed at run time; ``node`` is the failing node when the runtime named it."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


def failing_node(message: str) -> str | None:
    """Pull the failing node's name out of an ONNX Runtime error message."""
    m = _NODE_IN_MESSAGE.search(message)
    if not m:
        return None
    return next(g for g in m.groups() if g)


def first_line(message: str) -> str:
    """The useful part of an ONNX Runtime error: the node's status message, without source paths."""
    message = str(message)
    if "Status Message:" in message:
        node = failing_node(message)
        detail = message.split("Status Message:", 1)[1]
        if "was false." in detail:
            detail = detail.split("was false.", 1)[1]
        detail = re.sub(r"^\s*\S+\.(?:h|cc|cpp):\d+\s+", "", detail).strip()
        return (f"node {node}: " if node else "") + detail.splitlines()[0][:300] if detail else message[:300]
    for line in message.splitlines():
        line = line.strip()
        if line:
            return line[:400]
    return "unknown error"


class OrtRunner(Runner):
    """Runs an in-memory ModelProto on the CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, model: onnx.ModelProto, threads: int | None = None) -> None:
        # snapshot now, so that later edits of ``model`` do not reach the session; dropped once
        # the session holds the weights, so that a large model is not kept twice (a runner is
        # activated once). A large model is written to a private temporary file instead of bytes
        # (see _LARGE_MODEL_BYTES).
        self._threads = threads
        self._session: Any = None
        self._model_bytes: bytes | None = None
        self._model_file: str | None = None
        self._large = serialized_size(model) > _LARGE_MODEL_BYTES
        if self._large:
            directory = tempfile.mkdtemp(prefix="dynashape-ort-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, directory, True)
            self._model_file = os.path.join(directory, "model.onnx")
            save_with_external_weights(model, self._model_file)
        else:
            self._model_bytes = model.SerializeToString()

    def activate(self) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)  # errors come back as exceptions; its own log would leak
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        if self._threads:
            opts.intra_op_num_threads = self._threads
        if self._large:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        source: bytes | str | None = self._model_bytes if self._model_file is None else self._model_file
        if source is None:
            raise RuntimeError("an OrtRunner is activated once; make a new one")  # a bug, not the user's
        try:
            self._session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise RunError(first_line(str(exc)), failing_node(str(exc))) from None
        finally:
            self._model_bytes = None
            if self._model_file is not None:
                self._model_file = None
                self._cleanup()

    def deactivate(self) -> None:
        self._session = None

    def output_names(self) -> list[str]:
        assert self._session is not None, "activate() first"
        return [o.name for o in self._session.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None, "activate() first"
        try:
            outs = self._session.run(None, feeds)
        except Exception as exc:
            raise RunError(first_line(str(exc)), failing_node(str(exc))) from None
        return dict(zip(self.output_names(), outs))


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One-shot convenience: build a session, run once, return named outputs."""
    with OrtRunner(model) as runner:
        return runner.infer(feeds)
