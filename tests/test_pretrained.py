"""Pretrained weights by name (`--weights torchvision:NAME`), offline: the table entry points at
a local file with a computed hash, the cache is a temporary TORCH_HOME."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SPECS
from onnx import numpy_helper

from resnext_compiler import pretrained
from resnext_compiler.pretrained import TABLE, Pretrained

TINY_IMAGENET = """\
spec_version: 1
name: tiny_imagenet
input: {channels: 3, height: 32, width: 32}
stem: cifar
block: {type: bottleneck, cardinality: 2, base_width: 16}
stages: [{depth: 1, width: 8}, {depth: 1, width: 16, stride: 2}]
head: {num_classes: 1000}
"""


@pytest.fixture
def tiny_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A `torchvision:tiny` table entry whose file is a local torch.save'd state dict; the
    torch.hub cache is tmp_path/torch_home. Returns (spec path, state dict, entry maker)."""
    import torch

    from resnext_compiler.backends.torch_module import build_module
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_IMAGENET)
    state = build_module(compile_spec(load_spec(spec)), seed=3).state_dict()
    staging = tmp_path / "published" / "tiny.pth"
    staging.parent.mkdir()
    torch.save(state, staging)
    sha256 = hashlib.sha256(staging.read_bytes()).hexdigest()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def publish(hash_prefix: str = sha256[:8]) -> Pretrained:
        published = staging.with_name(f"tiny-{hash_prefix}.pth")
        published.write_bytes(staging.read_bytes())
        entry = Pretrained("torchvision:tiny", "tiny", published.as_uri())
        monkeypatch.setitem(TABLE, entry.name, entry)
        return entry

    return spec, state, publish


def test_a_pretrained_name_is_fetched_once_and_carries_imagenet_names(
    tiny_published, run_cli, tmp_path: Path
) -> None:
    spec, state, publish = tiny_published
    entry = publish()
    result = run_cli(spec, "--weights", "torchvision:tiny", "-o", tmp_path / "tiny.onnx")
    assert result.code == 0, result
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / entry.file_name
    assert cached.is_file()
    model = onnx.load(tmp_path / "tiny.onnx")
    bias = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}["fc.bias"]
    np.testing.assert_array_equal(bias, state["fc.bias"].numpy())
    inspected = run_cli("inspect", tmp_path / "tiny.onnx", "--json")
    labels = json.loads(inspected.out)["contract"]["labels"]
    assert len(labels) == 1000 and labels[:3] == ["tench", "goldfish", "great white shark"]

    Path(entry.url.removeprefix("file://")).unlink()  # the cache answers from now on
    again = run_cli(
        spec, "--weights", "torchvision:tiny", "--backend", "triton", "-o", tmp_path / "repo"
    )
    assert again.code == 0, again
    assert (tmp_path / "repo" / "tiny_imagenet" / "labels.txt").read_text().startswith("tench\n")


def test_a_download_with_the_wrong_hash_is_refused_and_not_cached(
    tiny_published, run_cli, tmp_path: Path
) -> None:
    spec, _, publish = tiny_published
    entry = publish(hash_prefix="0badc0de")
    result = run_cli(spec, "--weights", "torchvision:tiny", "-o", tmp_path / "tiny.onnx")
    assert result.code == 2
    assert "does not match the published hash of torchvision:tiny" in result.err
    assert "expected 0badc0de" in result.err
    assert not (tmp_path / "tiny.onnx").exists()
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert not (checkpoints / entry.file_name).exists()
    assert list(checkpoints.iterdir()) == []  # no temporary file left either


def test_a_tampered_cached_file_is_refused(tiny_published, run_cli, tmp_path: Path) -> None:
    spec, _, publish = tiny_published
    entry = publish()
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / entry.file_name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK not the published file")
    result = run_cli(spec, "--weights", "torchvision:tiny", "-o", tmp_path / "tiny.onnx")
    assert result.code == 2
    assert f"the cached file {cached} does not match the published hash" in result.err
    assert f"rm {cached}" in result.err


def test_without_network_the_message_says_where_to_put_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    entry = Pretrained("torchvision:gone", "resnet18", (tmp_path / "gone-f37072fd.pth").as_uri())
    monkeypatch.setitem(TABLE, entry.name, entry)
    result = run_cli(
        SPECS / "resnet18.yaml", "--weights", "torchvision:gone", "-o", tmp_path / "r18.onnx"
    )
    assert result.code == 2
    target = tmp_path / "cache" / "hub" / "checkpoints" / "gone-f37072fd.pth"
    assert f"put it at {target}" in result.err and "TORCH_HOME" in result.err


def test_an_unknown_name_lists_the_known_ones(run_cli) -> None:
    result = run_cli(SPECS / "resnet18.yaml", "--weights", "torchvision:resnet19")
    assert result.code == 2
    assert "unknown pretrained weights 'torchvision:resnet19'" in result.err
    assert "torchvision:resnext50_32x4d" in result.err and "timm:seresnext50_32x4d" in result.err


def test_every_table_entry_names_a_spec_and_a_published_hash() -> None:
    for entry in TABLE.values():
        assert (SPECS / f"{entry.spec}.yaml").is_file(), entry
        assert len(entry.published_hash) >= 8, entry
        assert entry.url.startswith("https://"), entry


def test_torchvision_entries_are_torchvision_s_own_v1_files() -> None:
    """The URLs are the ones torchvision's weights enums publish (torchvision: test-only)."""
    from torchvision.models import get_model_weights

    for entry in TABLE.values():
        source, model = entry.name.split(":")
        if source == "torchvision":
            assert entry.url == get_model_weights(model).IMAGENET1K_V1.url


def test_the_cache_is_torch_hub_s(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert pretrained.cache_dir() == Path(torch.hub.get_dir()) / "checkpoints"


def test_train_fine_tunes_from_a_name_and_starts_a_new_classifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    """Weights of a 12-class model start a 10-class digits run: the body is taken over, the
    classifier initialised afresh, and a near-zero rate keeps the body where it started."""
    import torch
    from conftest import TINY_DIGITS_MODEL, tiny_digits_spec

    from resnext_compiler.backends.torch_module import build_module
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec
    from resnext_compiler.weights import read_weights

    other = tmp_path / "twelve.yaml"
    other.write_text(TINY_DIGITS_MODEL.replace("num_classes: 10", "num_classes: 12"))
    state = build_module(compile_spec(load_spec(other)), seed=5).state_dict()
    staging = tmp_path / "twelve.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    published = staging.rename(tmp_path / f"twelve-{digest[:8]}.pth")
    entry = Pretrained("timm:twelve", "twelve", published.as_uri())
    monkeypatch.setitem(TABLE, entry.name, entry)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    spec = tmp_path / "digits.yaml"
    spec.write_text(tiny_digits_spec("{dataset: digits, batch_size: 64}"))

    result = run_cli(
        "train",
        spec,
        "--weights",
        "timm:twelve",
        "--epochs",
        "1",
        "--lr",
        "1e-12",
        "-o",
        tmp_path / "run",
    )
    assert result.code == 0, result
    assert "fine-tuning: fc.weight, fc.bias initialised afresh" in result.out
    trained = read_weights(tmp_path / "run" / "model.safetensors")
    np.testing.assert_allclose(trained["conv1.weight"], state["conv1.weight"].numpy(), atol=1e-6)
    assert trained["fc.weight"].shape == (10, 64)


def test_fine_tuning_refuses_weights_whose_body_does_not_fit(tmp_path: Path) -> None:
    from conftest import TINY_DIGITS_MODEL

    from resnext_compiler.errors import UserError
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec
    from resnext_compiler.weights import InitialWeights, fine_tune_weights

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_DIGITS_MODEL)
    wider = tmp_path / "wider.yaml"
    wider.write_text(TINY_DIGITS_MODEL.replace("width: 16,", "width: 32,"))
    from safetensors.numpy import save_file

    wider_graph = compile_spec(load_spec(wider))
    initial = InitialWeights(wider_graph)
    save_file({name: initial[name] for name in initial}, tmp_path / "wider.safetensors")
    with pytest.raises(UserError, match="wrong shapes"):
        fine_tune_weights(compile_spec(load_spec(spec)), tmp_path / "wider.safetensors")
