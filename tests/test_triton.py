"""The Triton backend: a model repository whose config parses as Triton's ModelConfig."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from resnext_compiler.backends.triton import preferred_batch_sizes

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

SPEC = """
name: tiny-net v2
input: {height: 16, width: 16}
stem: cifar
block: {cardinality: 4, base_width: 8}
stages: [{depth: 1, width: 16}, {depth: 1, width: 32}]
head: {num_classes: 5}
"""


def parse_config(path) -> object:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def test_repository_layout_and_config_parse_as_model_config(tmp_path, run_cli, write_spec):
    spec = write_spec(SPEC)
    repo = tmp_path / "repo"
    result = run_cli(spec, "--backend", "triton", "-o", repo, "--max-batch", "16")
    assert result.code == 0, result
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "tiny-net_v2", "tiny-net_v2/1", "tiny-net_v2/1/model.onnx", "tiny-net_v2/config.pbtxt"]
    config = parse_config(repo / "tiny-net_v2" / "config.pbtxt")
    assert config.name == "tiny-net_v2"  # Triton requires the directory name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    (inp,) = config.input
    assert (inp.name, list(inp.dims), inp.data_type) == ("input", [3, 16, 16],
                                                        model_config_pb2.TYPE_FP32)
    assert inp.format == model_config_pb2.ModelInput.FORMAT_NCHW
    (out,) = config.output
    assert (out.name, list(out.dims), out.data_type) == ("logits", [5], model_config_pb2.TYPE_FP32)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    assert config.parameters["spec_name"].string_value == "tiny-net v2"


def test_model_in_repository_matches_config_and_batches(tmp_path, run_cli, write_spec):
    repo = tmp_path / "repo"
    assert run_cli(write_spec(SPEC), "--backend", "triton", "-o", repo).code == 0
    model_path = repo / "tiny-net_v2" / "1" / "model.onnx"
    onnx.checker.check_model(str(model_path), full_check=True)
    config = parse_config(repo / "tiny-net_v2" / "config.pbtxt")
    model = onnx.load(str(model_path))
    # Triton's rule for batching models: model dims = [-1 (batch)] + config dims.
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (model.graph.input[0], model.graph.output[0])]
    assert dims == [["N", *config.input[0].dims], ["N", *config.output[0].dims]]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    batch = np.zeros((config.max_batch_size, 3, 16, 16), np.float32)
    assert session.run(None, {"input": batch})[0].shape == (32, 5)


def test_fp16_and_static_batch_configs(tmp_path, run_cli, write_spec):
    spec = write_spec(SPEC)
    assert run_cli(spec, "--backend", "triton", "-o", tmp_path / "a", "--dtype", "fp16").code == 0
    config = parse_config(tmp_path / "a" / "tiny-net_v2" / "config.pbtxt")
    assert config.input[0].data_type == model_config_pb2.TYPE_FP16
    assert config.output[0].data_type == model_config_pb2.TYPE_FP16
    assert run_cli(spec, "--backend", "triton", "-o", tmp_path / "b", "--batch", "4").code == 0
    config = parse_config(tmp_path / "b" / "tiny-net_v2" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [4, 3, 16, 16]
    assert list(config.output[0].dims) == [4, 5]


def test_default_output_is_model_repository(tmp_path, run_cli, write_spec, monkeypatch):
    spec = write_spec(SPEC)
    monkeypatch.chdir(tmp_path)
    assert run_cli(spec, "--backend", "triton").code == 0
    assert (tmp_path / "model_repository" / "tiny-net_v2" / "config.pbtxt").is_file()


def test_output_that_is_a_file_is_a_user_error(tmp_path, run_cli, write_spec):
    (tmp_path / "repo").write_text("")
    result = run_cli(write_spec(SPEC), "--backend", "triton", "-o", tmp_path / "repo")
    assert result.code == 2 and "repository directory" in result.err


@pytest.mark.parametrize(("max_batch", "preferred"),
                         [(1, []), (2, [2]), (8, [2, 4, 8]), (32, [8, 16, 32]), (48, [16, 32, 48])])
def test_preferred_batch_sizes(max_batch, preferred):
    assert preferred_batch_sizes(max_batch) == preferred
