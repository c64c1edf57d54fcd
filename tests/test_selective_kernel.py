"""The selective-kernel block (Li et al. 2019), added as one block file: timm's numbers and
outputs, every backend, located refusals."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import SPECS

from resnext_compiler.backends.base import CompileOptions
from resnext_compiler.backends.caffe import build_layers
from resnext_compiler.backends.dot import to_dot
from resnext_compiler.backends.onnx import export_onnx
from resnext_compiler.backends.torch_module import build_module
from resnext_compiler.errors import SpecError
from resnext_compiler.importers import import_weights
from resnext_compiler.passes.complexity import analyse
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.report import report_table
from resnext_compiler.spec import load_spec, parse_spec

timm = pytest.importorskip("timm")

SK_SPEC = SPECS / "skresnext50_32x4d.yaml"
TIMM_PARAMS = 27_479_784  # sum(p.numel() for p in timm skresnext50_32x4d .parameters())

TINY_SK = """\
name: tiny_sk
input: {channels: 3, height: 32, width: 32}
stem: cifar
block: {type: selective_kernel, cardinality: 4, base_width: 8, attention_divisor: 8}
stages: [{depth: 1, width: 16}, {depth: 2, width: 32, stride: 2}]
head: {num_classes: 5}
"""


def _timm_reference(name: str, **kwargs) -> torch.nn.Module:
    """A timm model with random weights and non-trivial BN statistics, in eval mode."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def test_parameter_count_and_state_dict_equal_timm():
    graph = compile_spec(load_spec(SK_SPEC))
    theirs = timm.create_model("skresnext50_32x4d", pretrained=False).state_dict()
    assert analyse(graph).params == TIMM_PARAMS
    assert [(p.name, p.shape) for p in graph.params()] == [
        (k, tuple(v.shape)) for k, v in theirs.items()]


def test_split_input_variant_equals_timm_skresnet50():
    """skresnet50: each path reads half the channels, attention width divisible by 8."""
    spec = parse_spec(f"extends: {SPECS / 'resnet50.yaml'}\n"
                      "block: {type: selective_kernel, split_input: true, attention_divisor: 8}\n")
    theirs = timm.create_model("skresnet50", pretrained=False)
    ours = compile_spec(spec)
    assert analyse(ours).params == sum(p.numel() for p in theirs.parameters())
    assert [p.name for p in ours.params()] == list(theirs.state_dict())


def test_imported_timm_weights_give_timm_logits_in_torch_and_onnxruntime(tmp_path):
    reference = _timm_reference("skresnext50_32x4d")
    source = tmp_path / "sk.pth"
    torch.save(reference.state_dict(), source)
    spec = parse_spec(f"extends: {SK_SPEC}\ninput: {{height: 64, width: 64}}\n")
    result = import_weights(source, spec)
    graph = compile_spec(spec)
    ours = build_module(graph).eval()
    ours.load_state_dict({k: torch.from_numpy(v) for k, v in result.tensors.items()})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.abs().max() > 1e-3 and (expected[0] - expected[1]).abs().max() > 1e-3
    assert (got - expected).abs().max().item() <= 1e-5
    path = export_onnx(graph, CompileOptions(), tmp_path / "sk.onnx", weights=result.tensors)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x.numpy()})[0]
    assert np.abs(logits - expected.numpy()).max() <= 1e-5


def test_torch_source_computes_what_the_module_computes(tmp_path, run_cli):
    spec_path = tmp_path / "tiny_sk.yaml"
    spec_path.write_text(TINY_SK)
    result = run_cli(spec_path, "--backend", "torch", "-o", tmp_path / "sk.py")
    assert result.code == 0, result.err
    namespace: dict = {}
    exec(compile((tmp_path / "sk.py").read_text(), "sk.py", "exec"), namespace)  # noqa: S102
    generated = namespace["build"]().eval()
    ours = build_module(compile_spec(parse_spec(TINY_SK))).eval()
    generated.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(generated(x), ours(x))
    source = (tmp_path / "sk.py").read_text()
    assert "dilation=2" in source
    assert "# layer2.0: selective_kernel C=4 d=4 dilations 1,2, stride 2" in source


def test_inspect_and_dot_read_the_block_record():
    spec = parse_spec(TINY_SK)
    graph = compile_spec(spec)
    assert "layer2.1  selective_kernel C=4 d=4 dilations 1,2 stride 1" in to_dot(graph)
    assert "conv 3x3/2 dilation 2 g4 16->16" in to_dot(graph, expand=True)
    assert "4 x 4d" in report_table(spec, graph, analyse(graph))


def test_caffe_refuses_the_dilated_paths_at_the_spec_line(tmp_path):
    spec_path = tmp_path / "tiny_sk.yaml"
    spec_path.write_text(TINY_SK)
    spec = load_spec(spec_path)
    with pytest.raises(SpecError) as error:
        build_layers(compile_spec(spec), spec)
    first = error.value.diagnostics[0]
    assert first.format().startswith(f"{spec_path}:5:")  # the stages line (stride origin)
    assert "dilated convolution" in first.message and "ONNX" in first.message


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("block: {type: selective_kernel, preact: true}", "block.preact",
         "no pre-activation form"),
        ("block: {type: bottleneck, dilations: [1, 3]}", "block.dilations",
         "the bottleneck block has no dilations"),
        ("block: {type: selective_kernel, dilations: []}", "block.dilations",
         "at least 1 item"),
        ("block: {type: selective_kernel, dilations: [1, 99]}", "block.dilations[1]",
         "less than or equal to 16"),
        ("block: {type: selective_kernel, cardinality: 4, base_width: 2, split_input: true}",
         "block.split_input", "cannot share"),
        ("block: {type: selective_kernel, form: A}", "block.form",
         "the selective_kernel block has no form"),
    ],
)
def test_bad_selective_kernel_options_are_located(text, field, message, tmp_path):
    spec_path = tmp_path / "bad.yaml"
    spec_path.write_text(f"name: bad\ninput: {{height: 32, width: 32}}\nstem: cifar\n{text}\n"
                         "stages: [{depth: 1, width: 48}]\n")
    start = time.perf_counter()
    with pytest.raises(SpecError) as error:
        compile_spec(load_spec(spec_path))
    assert time.perf_counter() - start < 2.0
    (problem,) = error.value.diagnostics
    assert problem.field == field and message in problem.message
    assert problem.format().startswith(f"{spec_path}:4:")


SK_DIGITS = """\
spec_version: 1
name: tiny_sk_digits
input: {channels: 1, height: 8, width: 8}
stem: cifar
block: {type: selective_kernel, cardinality: 2, base_width: 16, attention_divisor: 8}
stages: [{depth: 1, width: 8}, {depth: 1, width: 16, stride: 2}]
head: {num_classes: 10}
train: {dataset: digits, epochs: 3, batch_size: 32, lr: 0.1, schedule: cosine}
"""


def test_train_evaluate_int8_and_serve_need_no_block_specific_code(tmp_path, run_cli):
    """The runtimes see only a graph, weights and an ONNX file: a selective-kernel network
    trains, evaluates (torch and onnxruntime agree), quantizes and serves like any other."""
    import json

    import httpx
    from test_int8 import write_split
    from test_serve_helpers import running_server

    from resnext_compiler.runtimes.serve.config import ServeConfig
    from resnext_compiler.runtimes.serve.server import load_models
    from resnext_compiler.runtimes.train.datasets import open_dataset

    (tmp_path / "sk.yaml").write_text(SK_DIGITS)
    run = tmp_path / "run"
    assert run_cli("train", tmp_path / "sk.yaml", "--run-dir", run, "--threads", "1").code == 0
    data = open_dataset(load_spec(tmp_path / "sk.yaml"), "digits", None, augment="none")
    write_split(data.train, tmp_path / "train")
    write_split(data.val, tmp_path / "val")
    spec, weights = run / "spec.yaml", run / "model.safetensors"
    errors = {}
    for name, extra in (("fp32", ()), ("int8", ("--dtype", "int8", "--calibrate",
                                                tmp_path / "train"))):
        result = run_cli(spec, "--weights", weights, "-o", tmp_path / f"{name}.onnx", *extra)
        assert result.code == 0, result.err
    for name, model in (("torch", (spec, "--weights", weights)),
                        ("fp32", (tmp_path / "fp32.onnx",)), ("int8", (tmp_path / "int8.onnx",))):
        result = run_cli("evaluate", *model, "--data", tmp_path / "val", "--json")
        assert result.code == 0, result.err
        errors[name] = json.loads(result.out)["top1_error"]
    assert errors["torch"] == errors["fp32"] < 50  # it learned, and ONNX computes the same
    assert abs(errors["int8"] - errors["fp32"]) <= 2
    models, _ = load_models(tmp_path / "int8.onnx", ServeConfig(device="cpu", max_batch=8))
    png = next((tmp_path / "val" / "3").iterdir()).read_bytes()
    with running_server(models) as server:
        answer = httpx.post(f"{server.url}/v1/classify?top_k=3",
                            files={"file": ("x.png", png, "image/png")})
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3
