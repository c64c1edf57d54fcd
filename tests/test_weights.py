"""Weights: safetensors and checkpoint readers, deterministic init, BatchNorm folding."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from conftest import random_ir_weights
from safetensors.numpy import save_file

from resnext_compiler.errors import UserError
from resnext_compiler.passes.fold_bn import fold_batchnorm, foldable_batchnorms
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import parse_spec
from resnext_compiler.weights import (
    InitialWeights,
    SafetensorsWeights,
    check_weights,
    model_weights,
    read_weights,
)

TINY = """
name: tiny
input: {height: 8, width: 8}
stem: cifar
block: {cardinality: 2, base_width: 32, preact: PREACT}
stages: [{depth: 1, width: 16}, {depth: 1, width: 32}]
head: {num_classes: 3}
"""


def tiny(preact: bool = False):
    return compile_spec(parse_spec(TINY.replace("PREACT", str(preact).lower())))


def random_state(graph, seed: int = 0) -> dict[str, np.ndarray]:
    return random_ir_weights(graph, seed, dtype=np.float32)


# --- reading --------------------------------------------------------------------------


def test_safetensors_read_tensor_by_tensor_equal_to_what_was_saved(tmp_path):
    state = random_state(tiny())
    save_file(state, str(tmp_path / "w.safetensors"))
    weights = read_weights(tmp_path / "w.safetensors")
    assert isinstance(weights, SafetensorsWeights)
    assert set(weights) == set(state) and len(weights) == len(state)
    for name, value in state.items():
        loaded = weights[name]
        assert loaded.dtype == value.dtype and np.array_equal(loaded, value)
        assert weights.shape(name) == value.shape
    first = weights["fc.weight"]
    first += 1  # each lookup is a private copy
    assert np.array_equal(weights["fc.weight"], state["fc.weight"])


def test_truncated_safetensors_is_a_user_error(tmp_path):
    save_file({"w": np.ones(100, np.float32)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:-40])
    with pytest.raises(UserError, match="data offsets"):
        read_weights(tmp_path / "w.safetensors")


def test_bfloat16_safetensors_widen_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)  # exactly representable in bf16
    raw = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    header = b'{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]}}'
    (tmp_path / "b.safetensors").write_bytes(safetensors_bytes(header, raw))
    loaded = read_weights(tmp_path / "b.safetensors")["w"]
    assert loaded.dtype == np.float32 and np.array_equal(loaded, values)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict"])
def test_torch_checkpoints_with_ddp_prefix_read_as_numpy(tmp_path, wrap):
    state = random_state(tiny())
    tensors = {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}
    saved = tensors if wrap == "plain" else {wrap: tensors, "epoch": 4, "optimizer": {}}
    torch.save(saved, tmp_path / "ckpt.pt")
    loaded = read_weights(tmp_path / "ckpt.pt")
    assert set(loaded) == set(state)
    assert all(np.array_equal(loaded[k], v) for k, v in state.items())


def test_checkpoints_with_code_are_refused(tmp_path):
    torch.save({"model": {"x": torch.zeros(1)}, "fn": np.random.default_rng}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="cannot read as a PyTorch checkpoint"):
        read_weights(tmp_path / "evil.pt")


def safetensors_bytes(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not a safetensors file or a PyTorch checkpoint"),
    (b"\x00" * 64, "not a safetensors file"),
    (safetensors_bytes(b"{not json}", b""), "header is not JSON"),
    (safetensors_bytes(b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8),
     "data offsets 0..16"),
    (safetensors_bytes(b'{"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}}', b"\0"),
     "unsupported or malformed"),
])
def test_broken_weight_files_are_user_errors(tmp_path, content, message):
    (tmp_path / "w.safetensors").write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_weights(tmp_path / "w.safetensors")


def test_mismatches_are_listed_with_names_and_shapes():
    graph = tiny()
    state = random_state(graph)
    state["layer1.0.conv2.weight"] = np.zeros((32, 16, 3, 3), np.float32)
    del state["fc.bias"]
    state["fc2.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(UserError) as info:
        check_weights(graph, state)
    text = str(info.value)
    assert "1 wrong shapes, 1 missing, 1 unexpected" in text
    assert "layer1.0.conv2.weight: expected shape [16, 8, 3, 3], got [32, 16, 3, 3]" in text
    assert "fc.bias: missing (expected shape [3])" in text
    assert "fc2.weight: not a parameter of tiny (shape [3, 3])" in text


def test_num_batches_tracked_is_optional():
    graph = tiny()
    state = {k: v for k, v in random_state(graph).items() if "num_batches_tracked" not in k}
    check_weights(graph, state)  # inference never reads the counter


def test_model_weights_checks_a_file_against_the_graph(tmp_path):
    save_file(random_state(tiny(preact=True)), str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="weights other.safetensors do not fit tiny"):
        model_weights(tiny(), tmp_path / "other.safetensors")


# --- initialisation -------------------------------------------------------------------


def test_initial_weights_are_deterministic_and_order_independent():
    graph = tiny()
    a, b, c = InitialWeights(graph, 1), InitialWeights(graph, 1), InitialWeights(graph, 2)
    names = list(a)
    first = {n: a[n] for n in names}
    reverse = {n: b[n] for n in reversed(names)}
    assert all(np.array_equal(first[n], reverse[n]) for n in names)
    assert not np.array_equal(first["layer1.0.conv1.weight"], c["layer1.0.conv1.weight"])


def test_initial_weights_follow_he_et_al_fan_out_and_bn_identity():
    graph = compile_spec(parse_spec(
        "name: w\ninput: {height: 32, width: 32}\nblock: {cardinality: 32, base_width: 4}\n"
        "stages: [{depth: 1, width: 256}]\nhead: {num_classes: 1000}\n"))
    weights = InitialWeights(graph, 0)
    conv = weights["layer1.0.conv2.weight"]  # 3x3 grouped conv, 32 x 16 = 512 outputs
    assert conv.dtype == np.float32
    assert conv.std() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)
    assert abs(conv.mean()) < 1e-3
    # Kaiming normal, as the torch module: about 4.6% of a normal lies beyond 2 std.
    assert np.mean(np.abs(conv) > 2 * math.sqrt(2 / (512 * 9))) == pytest.approx(0.0455, abs=0.005)
    fc = weights["fc.weight"]
    assert np.abs(fc).max() <= 1 / math.sqrt(1024)
    assert fc.std() == pytest.approx(1 / math.sqrt(3 * 1024), rel=0.02)
    assert np.all(weights["layer1.0.bn1.weight"] == 1) and np.all(weights["bn1.bias"] == 0)
    assert np.all(weights["bn1.running_mean"] == 0) and np.all(weights["bn1.running_var"] == 1)
    assert weights["bn1.num_batches_tracked"].dtype == np.int64


def test_zero_init_last_bn_starts_at_zero():
    graph = compile_spec(parse_spec(TINY.replace("preact: PREACT", "zero_init_last_bn: true")))
    weights = InitialWeights(graph, 0)
    assert np.all(weights["layer1.0.bn3.weight"] == 0)
    assert np.all(weights["layer1.0.bn2.weight"] == 1)


# --- BatchNorm folding ----------------------------------------------------------------


def test_fold_removes_every_bn_that_follows_a_conv_and_leaves_the_input_graph_alone():
    graph = tiny()
    before = graph.nodes
    folded, weights = fold_batchnorm(graph, random_state(graph))
    assert graph.nodes == before
    assert [n for n in folded.nodes if n.op.kind == "batchnorm"] == []
    assert folded.node("layer1.0.conv1").op.bias
    assert folded.node("layer1.0.relu1").inputs == ("layer1.0.conv1",)
    assert set(weights) == {p.name for p in folded.params()}
    assert "layer1.0.conv1.bias" in weights and "layer1.0.bn1.weight" not in weights


def test_pre_activation_bns_after_an_addition_stay():
    graph = tiny(preact=True)
    folds = foldable_batchnorms(graph)
    kept = {n.name for n in graph.nodes if n.op.kind == "batchnorm"} - set(folds)
    assert kept == {"layer1.0.bn1", "layer2.0.bn1", "final_bn"}  # they follow adds / the stem
    assert folds["layer1.0.bn2"] == "layer1.0.conv1"


def test_folded_conv_computes_conv_then_bn():
    """For a 1x1 conv the fold is checkable with a matrix product."""
    graph = tiny()
    state = random_state(graph, seed=3)
    _, folded = fold_batchnorm(graph, state)
    x = np.random.default_rng(1).standard_normal((64, 5))  # 64 input channels, 5 pixels
    w = state["layer1.0.conv1.weight"][:, :, 0, 0].astype(np.float64)
    gamma, beta, mean, var = (state[f"layer1.0.bn1.{s}"].astype(np.float64)
                              for s in ("weight", "bias", "running_mean", "running_var"))
    scale = gamma[:, None] / np.sqrt(var[:, None] + 1e-5)
    expected = scale * (w @ x - mean[:, None]) + beta[:, None]
    got = folded["layer1.0.conv1.weight"][:, :, 0, 0] @ x + folded["layer1.0.conv1.bias"][:, None]
    assert folded["layer1.0.conv1.weight"].dtype == np.float32
    assert np.abs(got - expected).max() < 1e-4
