"""Serving dynashape models with NVIDIA Triton Inference Server.

:mod:`~dynashape.serving.config` turns an engine's sidecar (or an ONNX model's I/O) into a
``config.pbtxt``; :mod:`~dynashape.serving.repository` writes the model repository;
:mod:`~dynashape.serving.server` starts a local ``tritonserver`` (the one inside the
``nvidia-pytriton`` wheel) on it; ``triton_model.py`` is the Python-backend ``model.py``.
"""
