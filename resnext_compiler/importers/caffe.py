"""Caffe models (`.caffemodel`) whose layer names are the IR's, as `--backend caffe` writes them.

Blobs are turned into IR-named tensors by layer type, the inverse of the backend's mapping:
Convolution and InnerProduct `X` -> `X.weight`, `X.bias`; BatchNorm `X` -> `X.running_mean`,
`X.running_var` (divided by Caffe's moving-average scale factor, the third blob, as Caffe does;
an `eps` other than the IR's is folded into the variance); its Scale layer `X/scale` ->
`X.weight`, `X.bias` (a BatchNorm without one has gamma 1 and beta 0, which is what Caffe
computes). Blobs of any other layer come out as `X.blobs.N`, so `fit_to_graph` reports them
as unexpected, just as names that do not match the spec are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resnext_compiler.caffe_proto import CaffeLayer, read_net
from resnext_compiler.errors import UserError, shown
from resnext_compiler.ir import Graph
from resnext_compiler.ops import BatchNorm

SCALE_SUFFIX = "/scale"
CAFFE_DEFAULT_EPS = 1e-5  # BatchNormParameter.eps when a file leaves it out


def _weight_and_bias(layer: CaffeLayer) -> dict[str, np.ndarray]:
    names = ("weight", "bias")
    if len(layer.blobs) > 2:
        raise UserError(f"{shown(layer.type)} layer {layer.name!r} has {len(layer.blobs)} blobs, "
                        "expected a weight and an optional bias")
    return {f"{layer.name}.{n}": b for n, b in zip(names, layer.blobs, strict=False)}


def _batchnorm(layer: CaffeLayer, ir_eps: float) -> dict[str, np.ndarray]:
    if len(layer.blobs) != 3:
        raise UserError(f"BatchNorm layer {layer.name!r} has {len(layer.blobs)} blobs, "
                        "expected mean, variance and scale factor")
    mean, var, factor = (b.reshape(-1) for b in layer.blobs)
    scale = 0.0 if factor.size == 0 or factor[0] == 0 else 1.0 / float(factor[0])
    param = layer.definition.batch_norm_param
    eps = np.float32(param.eps if param.HasField("eps") else CAFFE_DEFAULT_EPS)
    var = var * scale
    if eps != np.float32(ir_eps):  # the file's eps stored as float32; compare like for like
        var = var + (float(eps) - ir_eps)
    return {f"{layer.name}.running_mean": mean * scale, f"{layer.name}.running_var": var}


def read_caffemodel(path: str | Path, graph: Graph) -> tuple[dict[str, np.ndarray], str]:
    """IR-named tensors of a caffemodel, and a short description of it."""
    net_name, layers = read_net(path)
    eps = {n.name: n.op.eps for n in graph.nodes if isinstance(n.op, BatchNorm)}
    by_name = {layer.name: layer for layer in layers}
    tensors: dict[str, np.ndarray] = {}
    with_blobs = 0
    for layer in layers:
        if not layer.blobs:
            continue
        with_blobs += 1
        if layer.type in ("Convolution", "InnerProduct"):
            tensors.update(_weight_and_bias(layer))
        elif layer.type == "BatchNorm":
            tensors.update(_batchnorm(layer, eps.get(layer.name, CAFFE_DEFAULT_EPS)))
            if layer.name + SCALE_SUFFIX not in by_name:
                channels = layer.blobs[0].size
                tensors[f"{layer.name}.weight"] = np.ones(channels, np.float32)
                tensors[f"{layer.name}.bias"] = np.zeros(channels, np.float32)
        elif layer.type == "Scale" and layer.name.endswith(SCALE_SUFFIX) and \
                by_name.get(layer.name.removesuffix(SCALE_SUFFIX), layer).type == "BatchNorm":
            owner = layer.name.removesuffix(SCALE_SUFFIX)
            gamma = layer.blobs[0].reshape(-1)
            beta = layer.blobs[1].reshape(-1) if len(layer.blobs) > 1 else np.zeros_like(gamma)
            tensors[f"{owner}.weight"], tensors[f"{owner}.bias"] = gamma, beta
        else:
            for i, blob in enumerate(layer.blobs):
                tensors[f"{layer.name}.blobs.{i}"] = blob
    if not with_blobs:
        raise UserError(f"{shown(Path(path).name)}: the Caffe model has no layer with weights "
                        "(a deploy net without blobs?)")
    detail = f"Caffe model {net_name!r}, {with_blobs} layers with blobs"
    return tensors, detail
