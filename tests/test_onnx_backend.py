"""The ONNX backend: checker, onnxruntime against the PyTorch module, options, no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import SPECS
from onnx import numpy_helper
from safetensors.numpy import save_file

from resnext_compiler.backends.base import CompileOptions
from resnext_compiler.backends.onnx import DEFAULT_OPSET, export_onnx
from resnext_compiler.backends.onnx_graph import build_graph, weight_specs
from resnext_compiler.backends.torch_module import build_module, load_weights
from resnext_compiler.ir import Graph
from resnext_compiler.passes.fold_bn import fold_batchnorm
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import Spec, load_spec, parse_spec
from resnext_compiler.weights import InitialWeights

ZOO = sorted(path.stem for path in SPECS.glob("*.yaml"))


def small(name: str, size: int | None = None) -> Spec:
    """A zoo spec at a small input (64x64 ImageNet, 32x32 CIFAR) via `extends:`."""
    base = load_spec(SPECS / f"{name}.yaml")
    size = size or (32 if base.input.height <= 32 else 64)
    return parse_spec(f"extends: {SPECS / name}.yaml\ninput: {{height: {size}, width: {size}}}\n")


def residual_bns(graph: Graph) -> set[str]:
    """The BN closing each residual branch (the one before the addition or SE)."""
    feeds: dict[str, list[str]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            feeds.setdefault(name, []).append(node.name)
    kinds = {node.name: node.op.kind for node in graph.nodes}
    return {node.name for node in graph.nodes
            if node.op.kind == "batchnorm" and "downsample" not in node.name
            and any(kinds[c] == "add" or c.endswith("se.pool") for c in feeds.get(node.name, []))}


def calibrated_model(graph: Graph, seed: int = 0) -> torch.nn.Module:
    """A module (eval mode) whose weights behave like a trained network's.

    BN statistics are measured on a batch (so every BN normalises), the BN closing each
    residual branch gets a small scale (as in trained ResNets), and the logits are of order 1
    and depend on the input. Random BN statistics instead give either input-independent
    logits or a chaotic network in which float32 rounding alone moves the logits by 1e-4.
    """
    generator = torch.Generator().manual_seed(seed)
    model = build_module(graph, seed)
    last = residual_bns(graph)
    s = graph.input_shape
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative average: running stats = batch stats
                module.reset_running_stats()
                module.weight.uniform_(*((0.1, 0.3) if name in last else (0.5, 1.0)),
                                       generator=generator)
                module.bias.uniform_(-0.1, 0.1, generator=generator)
        model.train()
        model(torch.randn(2, s.channels, s.height, s.width, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.add_(0.1 * module.running_var.mean())
    return model.eval()


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def calibrated_weights(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    return numpy_state(calibrated_model(graph, seed))


def torch_reference(graph: Graph, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    model = build_module(graph).eval()
    load_weights(model, {k: torch.from_numpy(v) for k, v in weights.items()})
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def check(path: Path) -> onnx.ModelProto:
    onnx.checker.check_model(str(path), full_check=True)
    return onnx.load(str(path), load_external_data=False)


class ZooCase:
    def __init__(self, name: str):
        self.graph = compile_spec(small(name))
        model = calibrated_model(self.graph)
        self.weights = numpy_state(model)
        shape = self.graph.input_shape
        self.x = np.random.default_rng(1).standard_normal(
            (2, shape.channels, shape.height, shape.width)).astype(np.float32)
        with torch.no_grad():
            self.reference = model(torch.from_numpy(self.x)).numpy()


@pytest.fixture(scope="module")
def zoo_case():
    cache: dict[str, ZooCase] = {}

    def get(name: str) -> ZooCase:
        if name not in cache:
            cache.clear()  # one model in memory at a time
            cache[name] = ZooCase(name)
        return cache[name]

    return get


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability is not under test here; skipping fsync saves seconds per large model."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


@pytest.mark.parametrize(("name", "dtype"), [(n, d) for n in ZOO for d in TOLERANCE])
def test_zoo_model_passes_checker_and_matches_torch(name, dtype, zoo_case, tmp_path, no_fsync):
    case = zoo_case(name)
    path = export_onnx(case.graph, CompileOptions(dtype=dtype), tmp_path / "m.onnx",
                       weights=case.weights)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == ("tensor(float16)" if dtype == "fp16" else
                                            "tensor(float)")
    x = case.x.astype(np.float16 if dtype == "fp16" else np.float32)
    logits = session.run(["logits"], {"input": x})[0]
    assert logits.shape == case.reference.shape
    # The logits are of order 1 and depend on the input: the comparison is not vacuous.
    assert np.abs(case.reference).max() > 0.1
    assert np.abs(case.reference[0] - case.reference[1]).max() > 0.05
    assert np.abs(logits.astype(np.float32) - case.reference).max() <= TOLERANCE[dtype]


def test_resnext50_at_224_matches_torch(tmp_path):
    graph = compile_spec(load_spec(SPECS / "resnext50_32x4d.yaml"))
    model = calibrated_model(graph, seed=3)
    save_file(numpy_state(model), str(tmp_path / "w.safetensors"))
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    path = export_onnx(graph, CompileOptions(weights=tmp_path / "w.safetensors"),
                       tmp_path / "m.onnx")
    check(path)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    assert np.abs(run_onnx(path, x) - reference).max() <= 1e-4


TINY = """
name: tiny
input: {{height: 16, width: 16}}
stem: {stem}
block: {{cardinality: 4, base_width: 8, form: {form}, preact: {preact}, se_ratio: {se}}}
shortcut: {shortcut}
avg_down: {avg_down}
stages:
  - {{depth: 2, width: 16}}
  - {{depth: 1, width: 32, stride: 2}}
head: {{num_classes: 7, dropout: 0.2}}
"""


def tiny(stem="cifar", form="C", preact="false", se=0, shortcut="B", avg_down="false",
         size=16) -> Graph:
    text = TINY.format(stem=stem, form=form, preact=preact, se=se, shortcut=shortcut,
                       avg_down=avg_down).replace("height: 16, width: 16",
                                                  f"height: {size}, width: {size}")
    return compile_spec(parse_spec(text))


VARIANTS = {
    "form A": dict(form="A"),
    "form B": dict(form="B"),
    "preact": dict(preact="true"),
    "squeeze-excitation": dict(se=0.25),
    "shortcut A": dict(shortcut="A"),
    "shortcut C": dict(shortcut="C"),
    "deep stem, avg_down, odd size": dict(stem="deep", avg_down="true", size=35),
    "imagenet stem, odd size": dict(stem="imagenet", size=37),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fold_bn_on_and_off_agree_with_torch(variant, tmp_path):
    graph = tiny(**VARIANTS[variant])
    weights = calibrated_weights(graph)
    save_file(weights, str(tmp_path / "w.safetensors"))
    shape = graph.input_shape
    x = np.random.default_rng(0).standard_normal(
        (3, shape.channels, shape.height, shape.width)).astype(np.float32)
    reference = torch_reference(graph, weights, x)
    outputs = {}
    for fold in (True, False):
        path = export_onnx(graph, CompileOptions(weights=tmp_path / "w.safetensors",
                                                 fold_bn=fold), tmp_path / f"{fold}.onnx")
        model = check(path)
        bn_nodes = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
        ir_bns = [n.name for n in graph.nodes if n.op.kind == "batchnorm"]
        if fold:
            assert len(bn_nodes) < len(ir_bns)
            if VARIANTS[variant].get("preact") is None and variant != "form A":
                assert bn_nodes == []  # every BN follows a conv
        else:
            assert bn_nodes == ir_bns
        outputs[fold] = run_onnx(path, x)
        assert np.abs(outputs[fold] - reference).max() <= 1e-5
    assert np.abs(outputs[True] - outputs[False]).max() <= 1e-5


def test_batch_1_3_and_8_run_through_one_dynamic_model(tmp_path):
    graph = tiny()
    weights = calibrated_weights(graph)
    save_file(weights, str(tmp_path / "w.safetensors"))
    path = export_onnx(graph, CompileOptions(weights=tmp_path / "w.safetensors"),
                       tmp_path / "m.onnx")
    model = check(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 16, 16]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out_dims] == ["N", 7]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((8, 3, 16, 16)).astype(np.float32)
    reference = torch_reference(graph, weights, x)
    for batch in (1, 3, 8):
        logits = session.run(["logits"], {"input": x[:batch]})[0]
        assert logits.shape == (batch, 7)
        assert np.abs(logits - reference[:batch]).max() <= 1e-5


def test_fp16_model_stores_half_precision_weights(tmp_path):
    path = export_onnx(tiny(se=0.25), CompileOptions(dtype="fp16"), tmp_path / "m.onnx")
    model = check(path)
    half = onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == half
    assert model.graph.output[0].type.tensor_type.elem_type == half
    assert {t.data_type for t in model.graph.initializer} == {half}
    fp32 = export_onnx(tiny(se=0.25), CompileOptions(), tmp_path / "m32.onnx")
    assert 0.45 < path.stat().st_size / fp32.stat().st_size < 0.55


def test_static_batch_fixes_the_first_dimension(tmp_path):
    path = export_onnx(tiny(), CompileOptions(batch=4), tmp_path / "m.onnx")
    model = check(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 16, 16]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((4, 3, 16, 16), np.float32)})[0].shape == (4, 7)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"input": np.zeros((3, 3, 16, 16), np.float32)})


def test_node_names_follow_the_ir_and_weights_their_state_dict_names(tmp_path):
    graph = compile_spec(small("resnext50_32x4d"))
    path = export_onnx(graph, CompileOptions(), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    nodes = {n.name: n for n in model.graph.node}
    conv = nodes["layer3.5.conv2"]
    assert conv.op_type == "Conv" and conv.output == ["layer3.5.conv2"]
    assert list(conv.input) == ["layer3.5.relu1", "layer3.5.conv2.weight", "layer3.5.conv2.bias"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}["group"] == 32
    assert nodes["fc"].op_type == "Gemm" and list(nodes["fc"].output) == ["logits"]
    assert [i.name for i in model.graph.input] == ["input"]
    initializers = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert initializers["layer3.5.conv2.weight"] == (512, 16, 3, 3)
    assert initializers["fc.weight"] == (1000, 2048)


def test_metadata_names_the_spec_hash_and_compiler(tmp_path):
    spec = small("resnext50_32x4d")
    path = export_onnx(compile_spec(spec), CompileOptions(seed=7), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["spec_name"] == "resnext50_32x4d"
    assert meta["spec_hash"] == spec.spec_hash()
    assert meta["compiler_version"] == "0.1.0"
    assert meta["weights"] == "initialised, seed 7"
    assert model.producer_name == "resnext-compile"
    assert [(o.domain, o.version) for o in model.opset_import] == [("", DEFAULT_OPSET)]
    assert DEFAULT_OPSET >= 17


def test_same_seed_gives_the_same_bytes_and_another_seed_different_ones(tmp_path):
    graph = tiny()
    paths = [export_onnx(graph, CompileOptions(seed=s), tmp_path / f"{i}.onnx")
             for i, s in enumerate((3, 3, 4))]
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1]
    assert data[0] != data[2] and len(data[0]) == len(data[2])


def test_streamed_file_parses_to_the_model_onnx_itself_would_build(tmp_path):
    """The hand-framed initializers decode to exactly what numpy_helper.from_array makes."""
    graph = tiny(se=0.25)
    path = export_onnx(graph, CompileOptions(seed=2), tmp_path / "m.onnx")
    folded, weights = fold_batchnorm(graph, InitialWeights(graph, 2))
    expected = build_graph(folded)
    expected.initializer.extend(numpy_helper.from_array(np.asarray(weights[s.name]), s.name)
                                for s in weight_specs(folded, onnx.TensorProto.FLOAT))
    assert onnx.load(str(path)).graph == expected


def test_opset_option_and_out_of_range_opset(tmp_path, run_cli, write_spec):
    spec = write_spec(TINY.format(stem="cifar", form="C", preact="false", se=0, shortcut="B",
                                  avg_down="false"))
    assert run_cli(spec, "--opset", "21", "-o", tmp_path / "m.onnx").code == 0
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == 21
    result = run_cli(spec, "--opset", "9", "-o", tmp_path / "bad.onnx")
    # refused by the option's own range before anything is compiled
    assert result.code == 2 and "--opset" in result.err and "13" in result.err
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_writes_name_dot_onnx_by_default(tmp_path, run_cli, write_spec, monkeypatch):
    spec = write_spec(TINY.format(stem="cifar", form="C", preact="false", se=0, shortcut="B",
                                  avg_down="false"))
    monkeypatch.chdir(tmp_path)
    result = run_cli(spec, "--backend", "onnx")
    assert result.code == 0, result
    assert (tmp_path / "tiny.onnx").is_file() and "tiny.onnx" in result.out


def test_weights_that_do_not_fit_exit_2_and_leave_no_file(tmp_path, run_cli, write_spec):
    spec = write_spec(TINY.format(stem="cifar", form="C", preact="false", se=0, shortcut="B",
                                  avg_down="false"))
    weights = calibrated_weights(tiny())
    weights["fc.weight"] = np.zeros((10, 128), np.float32)
    del weights["layer1.0.conv1.weight"]
    save_file(weights, str(tmp_path / "w.safetensors"))
    result = run_cli(spec, "--weights", tmp_path / "w.safetensors", "-o", tmp_path / "m.onnx")
    assert result.code == 2
    assert "fc.weight: expected shape [7, 128], got [10, 128]" in result.err
    assert "layer1.0.conv1.weight: missing" in result.err
    assert "Traceback" not in result.err
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    result = run_cli(spec, "--weights", tmp_path / "junk.safetensors", "-o", tmp_path / "m.onnx")
    assert result.code == 2 and "not a safetensors file" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.safetensors", "spec.yaml",
                                                          "w.safetensors"]


def test_torch_checkpoint_gives_the_same_model_as_safetensors(tmp_path):
    graph = tiny()
    weights = calibrated_weights(graph)
    save_file(weights, str(tmp_path / "w.safetensors"))
    state = {f"module.{k}": torch.from_numpy(v) for k, v in weights.items()}
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pt")
    a = export_onnx(graph, CompileOptions(weights=tmp_path / "w.safetensors"), tmp_path / "a.onnx")
    b = export_onnx(graph, CompileOptions(weights=tmp_path / "ckpt.pt"), tmp_path / "b.onnx")
    strip = [onnx.load(str(p)) for p in (a, b)]
    for model in strip:
        del model.metadata_props[:]
    assert strip[0].SerializeToString() == strip[1].SerializeToString()


NO_TORCH = textwrap.dedent("""
    import sys
    from resnext_compiler.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not loaded, loaded
    print("no torch")
""")


def test_onnx_path_never_imports_torch(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.format(stem="imagenet", form="C", preact="false", se=0.25,
                                shortcut="B", avg_down="false").replace("16, width: 16",
                                                                          "32, width: 32"))
    weights = calibrated_weights(compile_spec(parse_spec(spec.read_text())))
    save_file(weights, str(tmp_path / "w.safetensors"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    for extra in ([], ["--weights", str(tmp_path / "w.safetensors"), "--dtype", "fp16"]):
        result = subprocess.run(
            [sys.executable, "-c", NO_TORCH, str(spec), "--backend", "onnx",
             "-o", str(tmp_path / "m.onnx"), *extra],
            capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "no torch" in result.stdout
        check(tmp_path / "m.onnx")
