"""Serving runtime: the ONNX form over HTTP (docs/serving.md).

The Open Inference Protocol (KServe v2, with Triton's binary tensor data extension) over
onnxruntime, plus `POST /v1/classify` for images, dynamic batching and Prometheus metrics.
Nothing here imports torch: the ONNX path stays torch-free.
"""

from resnext_compiler.runtimes.serve.config import ServeConfig

__all__ = ["ServeConfig"]
