"""`--backend caffe`: OpenCV's Caffe importer (an independent runtime) runs what we emit to the
torch module's logits; `import-weights` reads the caffemodel back bit for bit; bad input is a
located user error."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SPECS
from safetensors.numpy import load_file, save_file

from resnext_compiler.backends.caffe import (
    CaffeBackend,
    build_layers,
    caffe_pooled_size,
    deploy_prototxt,
)
from resnext_compiler.backends.torch_module import build_module
from resnext_compiler.errors import SpecError
from resnext_compiler.ir import Graph
from resnext_compiler.ops import AvgPool, BatchNorm
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec
from resnext_compiler.weights import InitialWeights

cv2 = pytest.importorskip("cv2")

# Every mapping at once, small: deep stem, avg-down, SE, a 33x30 input whose odd and even maps
# make Caffe's rounded-up pooling differ from PyTorch's in both directions, head dropout.
VARIANTS = {
    "se_deep_avgdown": """
        stem: deep
        avg_down: true
        block: {cardinality: 2, base_width: 16, se_ratio: 0.25}""",
    "formA_shortcutA": """
        stem: imagenet
        shortcut: A
        block: {cardinality: 4, base_width: 16, form: A}""",
    "formB_preact_cifar": """
        stem: cifar
        shortcut: C
        block: {cardinality: 4, base_width: 16, form: B, preact: true}""",
    "basic": """
        stem: imagenet
        block: {type: basic, cardinality: 1, expansion: 1}""",
}


def _variant_spec(body: str) -> str:
    return f"""
        spec_version: 1
        name: variant
        input: {{channels: 3, height: 33, width: 30}}
        {body.strip()}
        stages: [{{depth: 1, width: 16}}, {{depth: 2, width: 24, stride: 2}},
                 {{depth: 1, width: 40, stride: 2}}]
        head: {{num_classes: 10, dropout: 0.2}}
        """


def _weights_with_random_bn(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised convs (activations stay finite through 50 layers) and random BN
    statistics and affine terms, so no BatchNorm is the identity."""
    rng = np.random.default_rng(seed)
    initial = InitialWeights(graph, seed)
    out = {}
    for param in graph.params(include_buffers=True):
        suffix = param.name.rsplit(".", 1)[-1]
        if isinstance(graph.node(param.node).op, BatchNorm) and param.dtype != "int64":
            low, high = {"running_var": (0.5, 2.0), "weight": (0.5, 1.5)}.get(suffix, (-.2, .2))
            out[param.name] = rng.uniform(low, high, param.shape).astype(np.float32)
        else:
            out[param.name] = np.asarray(initial[param.name])
    return out


def _torch_logits(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    model = build_module(graph).eval()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _opencv_logits(directory, name: str, x: np.ndarray) -> np.ndarray:
    net = cv2.dnn.readNetFromCaffe(str(directory / f"{name}.prototxt"),
                                   str(directory / f"{name}.caffemodel"))
    net.setInput(x)
    return net.forward()


def _assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 1e-3
    assert np.abs(got - expected).max() <= 1e-4 * scale


def _input(graph: Graph, batch: int = 2, seed: int = 1) -> np.ndarray:
    s = graph.input_shape
    return np.random.default_rng(seed).normal(size=(batch, s.channels, s.height, s.width)).astype(
        np.float32)


def test_resnext50_with_torchvision_weights_runs_in_opencv(tmp_path, write_spec, run_cli):
    """The real resnext50_32x4d spec (at 64x64 to stay quick), torchvision's model and
    state-dict layout with random BN statistics: OpenCV gives torchvision's logits."""
    torchvision = pytest.importorskip("torchvision")
    shutil.copy(SPECS / "resnext50_32x4d.yaml", tmp_path)  # `extends` stays in the spec's folder
    spec_path = write_spec("""
        extends: resnext50_32x4d.yaml
        input: {channels: 3, height: 64, width: 64}
        """)
    torch.manual_seed(0)
    reference = torchvision.models.resnext50_32x4d().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "caffe"
    result = run_cli(spec_path, "--backend", "caffe", "-o", out, "--weights", tmp_path / "tv.pth")
    assert result.code == 0, result
    x = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    _assert_close(_opencv_logits(out, "resnext50_32x4d", x), expected)
    # The 32x32 map after the stem conv: Caffe pools it to 17x17, the crop keeps 16x16.
    prototxt = (out / "resnext50_32x4d.prototxt").read_text()
    assert 'name: "maxpool/crop_h"' in prototxt and 'name: "maxpool/crop_w"' in prototxt


def test_cifar_resnext29_runs_in_opencv(tmp_path, write_spec, run_cli):
    """ResNeXt-29's spec (CIFAR stem, three stages of three blocks) at a tiny width."""
    shutil.copy(SPECS / "resnext29_8x64d.yaml", tmp_path)  # `extends` stays in the spec's folder
    spec_path = write_spec("""
        extends: resnext29_8x64d.yaml
        name: resnext29_tiny
        block: {cardinality: 4, base_width: 4}
        stages: [{depth: 3, width: 16}, {depth: 3, width: 32, stride: 2},
                 {depth: 3, width: 64, stride: 2}]
        """)
    graph = compile_spec(load_spec(spec_path))
    weights = _weights_with_random_bn(graph)
    save_file(weights, tmp_path / "w.safetensors")
    out = tmp_path / "caffe"
    result = run_cli(spec_path, "--backend", "caffe", "-o", out, "-w", tmp_path / "w.safetensors")
    assert result.code == 0, result
    x = _input(graph)
    _assert_close(_opencv_logits(out, "resnext29_tiny", x), _torch_logits(graph, weights, x))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_mapping_runs_in_opencv(variant, tmp_path, write_spec):
    """Form A (Eltwise over the paths), form B (Concat), SE (Scale with two bottoms),
    shortcut A (Power zeros + Concat, 1x1 pooling subsample), avg-down, deep stem."""
    spec = load_spec(write_spec(_variant_spec(VARIANTS[variant])))
    graph = compile_spec(spec)
    paths = CaffeBackend().emit(graph, spec, _options(seed=3), tmp_path / "out")
    assert [p.name for p in paths] == ["variant.prototxt", "variant.caffemodel"]
    initial = {p.name: np.asarray(InitialWeights(graph, 3)[p.name]) for p in graph.params()}
    x = _input(graph)
    _assert_close(_opencv_logits(tmp_path / "out", "variant", x),
                  _torch_logits(graph, initial, x))


def _options(**kwargs):
    from resnext_compiler.backends.base import CompileOptions

    return CompileOptions(**kwargs)


@pytest.mark.parametrize("variant", ["formA_shortcutA", "se_deep_avgdown"])
def test_caffemodel_imports_back_to_the_same_weights(variant, tmp_path, write_spec, run_cli):
    spec_path = write_spec(_variant_spec(VARIANTS[variant]))
    graph = compile_spec(load_spec(spec_path))
    weights = _weights_with_random_bn(graph, seed=4)
    save_file(weights, tmp_path / "in.safetensors")
    assert run_cli(spec_path, "-b", "caffe", "-o", tmp_path / "c", "-w",
                   tmp_path / "in.safetensors").code == 0
    result = run_cli("import-weights", tmp_path / "c" / "variant.caffemodel", "--spec", spec_path,
                     "-o", tmp_path / "back.safetensors")
    assert result.code == 0, result
    assert f"imported {len(weights)} of {len(weights)}" in result.out
    back = load_file(tmp_path / "back.safetensors")
    assert back.keys() == weights.keys()
    for name, value in weights.items():
        if name.endswith("num_batches_tracked"):  # Caffe has no such counter: filled with 0
            assert back[name] == 0
        else:
            assert np.array_equal(back[name], value), name


def test_caffemodel_of_another_form_converts_on_import(tmp_path, write_spec, run_cli):
    """A form-A caffemodel imported for the form-C spec: the paths are regrouped."""
    spec_c = write_spec(_variant_spec(VARIANTS["formA_shortcutA"]).replace("form: A", "form: C"),
                        "c.yaml")
    spec_a = write_spec(_variant_spec(VARIANTS["formA_shortcutA"]), "a.yaml")
    assert run_cli(spec_a, "-b", "caffe", "-o", tmp_path / "a").code == 0
    result = run_cli("import-weights", tmp_path / "a" / "variant.caffemodel", "--spec", spec_c,
                     "-o", tmp_path / "c.safetensors")
    assert result.code == 0, result
    graph_a, graph_c = (compile_spec(load_spec(p)) for p in (spec_a, spec_c))
    initial = {p.name: np.asarray(InitialWeights(graph_a, 0)[p.name]) for p in graph_a.params()}
    converted = load_file(tmp_path / "c.safetensors")
    x = _input(graph_c)
    np.testing.assert_allclose(_torch_logits(graph_c, converted, x),
                               _torch_logits(graph_a, initial, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnext101_32x4d", "resnext152_32x4d", "resnext101_64x4d"])
def test_deep_specs_emit_a_net_opencv_parses(name, tmp_path):
    """The 101- and 152-layer specs: one Caffe layer per conv, a BatchNorm + Scale per BN,
    and a prototxt that OpenCV's parser accepts (weights are covered above)."""
    spec = load_spec(SPECS / f"{name}.yaml")
    graph = compile_spec(spec)
    layers = build_layers(graph, spec)
    kinds = [layer.type for layer in layers]
    convs = sum(n.op.kind == "conv" for n in graph.nodes)
    bns = sum(n.op.kind == "batchnorm" for n in graph.nodes)
    assert kinds.count("Convolution") == convs and kinds.count("BatchNorm") == bns
    assert kinds.count("Scale") == bns and kinds[-1] == "InnerProduct"
    assert len({layer.name for layer in layers}) == len(layers)
    path = tmp_path / f"{name}.prototxt"
    path.write_text(deploy_prototxt(spec.name, layers))
    net = cv2.dnn.readNetFromCaffe(str(path))
    assert len(net.getLayerNames()) >= len(layers) - 1  # OpenCV folds the Input layer away


@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "caffe"), [
    (112, 3, 2, 1, 57),  # PyTorch: 56; the ImageNet stem at 224
    (113, 3, 2, 1, 57),  # equal when the span divides evenly
    (32, 1, 2, 0, 17),  # shortcut A's subsample: PyTorch 16
    (7, 2, 2, 0, 4),  # avg-down with ceil_mode: PyTorch also 4
    (5, 2, 2, 1, 3),  # rounded up to 4, but the 4th window would start in the padding
])
def test_caffe_pooled_size_rounds_up_and_clips(size, kernel, stride, padding, caffe):
    assert caffe_pooled_size(size, kernel, stride, padding) == caffe
    floor = (size + 2 * padding - kernel) // stride + 1
    assert 0 <= caffe - floor <= 1


def test_inexpressible_op_is_refused_at_its_spec_line(write_spec):
    """An average pool that excludes padding from its divisor has no Caffe equivalent; the
    refusal names the spec field the node came from, with its file position."""
    spec_path = write_spec(_variant_spec(VARIANTS["se_deep_avgdown"]))
    spec = load_spec(spec_path)
    graph = compile_spec(spec)
    pool = next(n for n in graph.nodes if isinstance(n.op, AvgPool))
    odd = dataclasses.replace(pool, op=dataclasses.replace(pool.op, padding=1,
                                                           count_include_pad=False))
    graph = dataclasses.replace(graph, nodes=tuple(odd if n is pool else n for n in graph.nodes))
    with pytest.raises(SpecError) as error:
        build_layers(graph, spec)
    message = str(error.value)
    assert message.startswith(f"{spec_path}:")
    assert pool.origin in message and "count_include_pad" in message


def test_bad_options_and_outputs_are_user_errors(tmp_path, write_spec, run_cli):
    spec_path = write_spec(_variant_spec(VARIANTS["basic"]))
    result = run_cli(spec_path, "-b", "caffe", "-o", tmp_path / "c", "--dtype", "fp16")
    assert result.code == 2 and "float32" in result.err and "Traceback" not in result.err
    (tmp_path / "file").write_text("x")
    result = run_cli(spec_path, "-b", "caffe", "-o", tmp_path / "file")
    assert result.code == 2 and "directory" in result.err
    assert not (tmp_path / "c").exists()


def test_truncated_or_foreign_caffemodel_is_a_user_error(tmp_path, write_spec, run_cli):
    spec_path = write_spec(_variant_spec(VARIANTS["basic"]))
    assert run_cli(spec_path, "-b", "caffe", "-o", tmp_path / "c").code == 0
    model = (tmp_path / "c" / "variant.caffemodel").read_bytes()
    cases = {
        "truncated": model[: len(model) // 2],
        "empty": b"",
        "foreign": (tmp_path / "c" / "variant.prototxt").read_bytes(),  # text, not binary
        "onnx_like": b"\x08\x07\x12\x0cbackend-test",  # a protobuf of another schema
    }
    for label, data in cases.items():
        path = tmp_path / f"{label}.caffemodel"
        path.write_bytes(data)
        result = run_cli("import-weights", path, "--spec", spec_path, "-o",
                         tmp_path / "w.safetensors")
        assert result.code == 2, (label, result)
        assert "Caffe model" in result.err and "Traceback" not in result.err, (label, result)
    assert not (tmp_path / "w.safetensors").exists()


def test_caffemodel_of_another_spec_lists_the_mismatches(tmp_path, write_spec, run_cli):
    basic = write_spec(_variant_spec(VARIANTS["basic"]), "basic.yaml")
    other = write_spec(_variant_spec(VARIANTS["se_deep_avgdown"]), "other.yaml")
    assert run_cli(basic, "-b", "caffe", "-o", tmp_path / "c").code == 0
    result = run_cli("import-weights", tmp_path / "c" / "variant.caffemodel", "--spec", other,
                     "-o", tmp_path / "w.safetensors")
    assert result.code == 2
    # The basic blocks' convs have other shapes, the deep stem's conv1.0-6 and the SE layers
    # are missing, and conv1.weight (the ImageNet stem's) is unexpected.
    assert re.search(r"\d+ wrong shapes, [1-9]\d* missing, [1-9]\d* unexpected", result.err)
    assert not (tmp_path / "w.safetensors").exists()


def test_caffe_path_never_imports_torch(tmp_path, write_spec):
    """Emitting (from a safetensors file) and importing a caffemodel back run without torch."""
    spec_path = write_spec(_variant_spec(VARIANTS["se_deep_avgdown"]))
    graph = compile_spec(load_spec(spec_path))
    save_file(_weights_with_random_bn(graph), tmp_path / "w.safetensors")
    script = (
        "import sys\n"
        "from resnext_compiler.cli import main\n"
        "for argv in (sys.argv[1:8], sys.argv[8:]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), exc.code\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    model = tmp_path / "c" / "variant.caffemodel"
    subprocess.run([sys.executable, "-c", script, str(spec_path), "-b", "caffe", "-o",
                    str(tmp_path / "c"), "-w", str(tmp_path / "w.safetensors"),
                    "import-weights", str(model), "--spec", str(spec_path), "-o",
                    str(tmp_path / "back.safetensors")], check=True, capture_output=True)
    assert (tmp_path / "back.safetensors").is_file()


def test_ops_no_spec_produces_yet_run_in_opencv(tmp_path, write_spec):
    """Channel slices (Slice with Silence for the unused pieces) and a full-shape product
    (Eltwise PROD), which the IR has but no block lowers to today."""
    from resnext_compiler.backends.caffe import write_caffemodel
    from resnext_compiler.ir import INPUT, GraphBuilder
    from resnext_compiler.ops import Concat, Flatten, GlobalAvgPool, Linear, Mul, Slice, TensorShape
    from resnext_compiler.passes.shapes import infer_shapes

    b = GraphBuilder("ops", TensorShape(5, 6, 6))
    middle = b.add("middle", Slice(1, 3), INPUT)
    first = b.add("first", Slice(0, 2), INPUT)
    last = b.add("last", Slice(3, 5), INPUT)
    product = b.add("product", Mul(), middle, first)
    joined = b.add("joined", Concat(), product, last)
    pooled = b.add("pool", GlobalAvgPool(), joined)
    logits = b.add("fc", Linear(4, 3), b.add("flatten", Flatten(), pooled))
    graph = infer_shapes(b.build(logits))
    rng = np.random.default_rng(0)
    weights = {"fc.weight": rng.normal(size=(3, 4)).astype(np.float32),
               "fc.bias": rng.normal(size=3).astype(np.float32)}
    layers = build_layers(graph, load_spec(write_spec(_variant_spec(VARIANTS["basic"]))))
    (tmp_path / "ops.prototxt").write_text(deploy_prototxt("ops", layers))
    write_caffemodel(tmp_path / "ops.caffemodel", "ops", layers, weights.__getitem__)
    x = rng.normal(size=(2, 5, 6, 6)).astype(np.float32)
    joined_ref = np.concatenate([x[:, 1:3] * x[:, 0:2], x[:, 3:5]], axis=1)
    expected = joined_ref.mean(axis=(2, 3)) @ weights["fc.weight"].T + weights["fc.bias"]
    _assert_close(_opencv_logits(tmp_path, "ops", x), expected)


def test_batch_option_sets_the_input_layer_shape(tmp_path, write_spec, run_cli):
    spec_path = write_spec(_variant_spec(VARIANTS["basic"]))
    assert run_cli(spec_path, "-b", "caffe", "-o", tmp_path / "c", "--batch", "4").code == 0
    net_text = (tmp_path / "c" / "variant.prototxt").read_text()
    assert "dim: 4\n      dim: 3\n      dim: 33\n      dim: 30" in net_text
    x = _input(compile_spec(load_spec(spec_path)), batch=4)
    assert _opencv_logits(tmp_path / "c", "variant", x).shape == (4, 10)


def test_legacy_and_unpacked_blobs_are_read(tmp_path):
    """Pre-1.0 blobs (num/channels/height/width, no `shape`) and unpacked float data, both of
    which old caffemodels contain, come out with their real shapes."""
    from resnext_compiler.caffe_proto import message_classes, read_net

    classes = message_classes()
    net = classes["NetParameter"](name="old")
    layer = net.layer.add(name="fc", type="InnerProduct")
    layer.blobs.add(num=1, channels=1, height=3, width=2, data=[1, 2, 3, 4, 5, 6])
    layer.blobs.add(num=1, channels=1, height=1, width=3, data=[7, 8, 9])
    path = tmp_path / "old.caffemodel"
    path.write_bytes(net.SerializeToString())
    name, layers = read_net(path)
    assert name == "old" and [b.shape for b in layers[0].blobs] == [(3, 2), (3,)]
    assert layers[0].blobs[1].tolist() == [7, 8, 9]
    # The same blob with its floats unpacked (one fixed32 field each), as proto2 allows.
    blob = classes["BlobProto"](num=1, channels=1, height=1, width=2)
    unpacked = blob.SerializeToString() + b"".join(
        b"\x2d" + np.float32(v).tobytes() for v in (1.5, -2.0))  # field 5, wire type 5
    layer_bytes = b"\x0a\x02fc\x12\x0cInnerProduct" + b"\x3a" + bytes([len(unpacked)]) + unpacked
    path.write_bytes(b"\xa2\x06" + bytes([len(layer_bytes)]) + layer_bytes)  # field 100
    _, layers = read_net(path)
    assert layers[0].blobs[0].tolist() == [1.5, -2.0]
