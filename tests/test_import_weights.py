"""`resnext-compile import-weights`: torchvision, timm and Torch7 (.t7) sources, mismatches.

(Caffe models are covered in test_caffe_backend.py, next to the backend that writes them.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, SPECS
from safetensors.numpy import load_file, save_file
from torch7_writer import Module, seed_model, sequential, write_t7

from resnext_compiler.backends.torch_module import build_module
from resnext_compiler.importers.state_dict import rename
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec, with_form

TINY_SEED = """
name: tiny_seed
input: {channels: 3, height: 16, width: 16}
stem: cifar
block: {cardinality: 4, base_width: 16, form: C}
stages: [{depth: 2, width: 16}, {depth: 1, width: 32}]
head: {num_classes: 10}
"""
# (depth, stride, first block has a projection shortcut) as the seed's resnext.lua builds them.
TINY_SEED_STAGES = [(2, 1, False), (1, 2, True)]


def _ours(spec_path, weights_path, form=None):
    spec = load_spec(spec_path)
    if form is not None:
        spec = with_form(spec, form)
    model = build_module(compile_spec(spec)).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(weights_path).items()})
    return model


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet101", "resnext101_32x8d"])
def test_torchvision_weights_give_torchvision_outputs(name, tmp_path, run_cli):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    _randomise_bn(reference)
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    out = tmp_path / f"{name}.safetensors"
    result = run_cli("import-weights", tmp_path / f"{name}.pth", "--spec",
                     SPECS / f"{name}.yaml", "-o", out)
    assert result.code == 0, result
    assert f"imported {len(reference.state_dict())} of {len(reference.state_dict())}" in result.out
    ours = _ours(SPECS / f"{name}.yaml", out)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.abs().max() > 1e-3
    assert (got - expected).abs().max().item() <= 1e-5


def test_timm_safetensors_checkpoint_imports(tmp_path, run_cli):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    _randomise_bn(reference)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")  # the hub's format
    out = tmp_path / "r18.safetensors"
    result = run_cli("import-weights", tmp_path / "model.safetensors", "--spec",
                     SPECS / "resnet18.yaml", "-o", out)
    assert result.code == 0, result
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (_ours(SPECS / "resnet18.yaml", out)(x) - reference(x)).abs().max() <= 1e-5


def _tiny_seed_reference(form: str, spec_path, seed: int = 0):
    """A form-`form` module with random weights and those weights as IR-named numpy arrays."""
    spec = with_form(load_spec(spec_path), form)
    model = build_module(compile_spec(spec), seed=seed).eval()
    _randomise_bn(model, seed)
    return model, {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("t7_form", ["B", "C"])
@pytest.mark.parametrize("spec_form", ["A", "C"])
def test_seed_torch7_model_imports_end_to_end(t7_form, spec_form, tmp_path, write_spec, run_cli):
    """A .t7 in the seed's layout (form B or C, with conv biases) -> IR names -> same outputs."""
    spec_path = write_spec(TINY_SEED.replace("form: C", f"form: {spec_form}"))
    reference, weights = _tiny_seed_reference(t7_form, spec_path)
    rng = np.random.default_rng(3)  # conv biases, compensated in the BN means by the writer
    t7 = write_t7(tmp_path / "seed.t7", seed_model(weights, TINY_SEED_STAGES, t7_form, 4, rng))
    out = tmp_path / "seed.safetensors"
    result = run_cli("import-weights", t7, "--spec", spec_path, "-o", out)
    assert result.code == 0, result
    assert f"Torch7 (form {t7_form}" in result.out
    tensors = load_file(out)
    graph = compile_spec(load_spec(spec_path))
    assert {k: v.shape for k, v in tensors.items()} == {p.name: p.shape for p in graph.params()}
    assert tensors["layer1.0.bn3.num_batches_tracked"].dtype == np.int64
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, got = reference(x), _ours(spec_path, out)(x)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max().item() <= 1e-4


def test_torch7_legacy_running_std_and_missing_affine(tmp_path, write_spec):
    """Old nn.SpatialBatchNormalization kept running_std = 1/sqrt(var + eps); no-affine BN."""
    from resnext_compiler.importers import import_weights

    spec_path = write_spec("""
        name: stem_only
        input: {channels: 3, height: 8, width: 8}
        stem: cifar
        block: {cardinality: 1, base_width: 64}
        stages: [{depth: 1, width: 16}]
        head: {num_classes: 2}
        """)
    _, weights = _tiny_seed_reference("C", spec_path)
    model = seed_model(weights, [(1, 1, False)], "C", 1)
    stem_bn = model.fields["modules"][1]
    torch7_var = stem_bn.fields.pop("running_var").astype(np.float64)
    stem_bn.fields["running_std"] = 1.0 / np.sqrt(torch7_var + 1e-3)  # the stem BN's eps
    # Ours has eps 1e-5, so the importer folds the eps difference into the variance.
    var = weights["bn1.running_var"].astype(np.float64)
    del stem_bn.fields["weight"], stem_bn.fields["bias"]  # affine = false
    tensors = import_weights(write_t7(tmp_path / "m.t7", model), load_spec(spec_path)).tensors
    np.testing.assert_allclose(tensors["bn1.running_var"], var, rtol=1e-5)
    np.testing.assert_array_equal(tensors["bn1.weight"], np.ones(64, np.float32))
    np.testing.assert_array_equal(tensors["bn1.bias"], np.zeros(64, np.float32))


def test_torch7_model_of_another_network_lists_the_mismatch(tmp_path, write_spec, run_cli):
    spec_path = write_spec(TINY_SEED)
    _, weights = _tiny_seed_reference("C", spec_path)
    t7 = write_t7(tmp_path / "seed.t7", seed_model(weights, TINY_SEED_STAGES, "C", 4))
    other = write_spec(TINY_SEED.replace("cardinality: 4", "cardinality: 2"), "other.yaml")
    out = tmp_path / "x.safetensors"
    result = run_cli("import-weights", t7, "--spec", other, "-o", out)
    assert result.code == 2, result
    assert "does not fit tiny_seed in block forms C, B, A" in result.err
    assert "layer1.0.conv1" in result.err and "[16, 64, 1, 1]" in result.err
    assert not out.exists()


def test_torch7_unsupported_layer_is_a_user_error(tmp_path, write_spec, run_cli):
    spec_path = write_spec(TINY_SEED)
    model = sequential(Module("nn.SpatialFullConvolution", {"weight": np.ones((2, 2, 3, 3))}))
    result = run_cli("import-weights", write_t7(tmp_path / "odd.t7", model), "--spec", spec_path,
                     "-o", tmp_path / "x.safetensors")
    assert result.code == 2
    assert "unsupported Torch7 layer nn.SpatialFullConvolution at [1]" in result.err


def test_not_a_torch7_file_is_a_user_error(tmp_path, write_spec, run_cli):
    (tmp_path / "junk.t7").write_bytes(b"\x07\x00\x00\x00not torch")
    result = run_cli("import-weights", tmp_path / "junk.t7", "--spec", write_spec(TINY_SEED),
                     "-o", tmp_path / "x.safetensors")
    assert result.code == 2 and "cannot read as a Torch7 file" in result.err


def _resnet18_state(tmp_path):
    spec = load_spec(SPECS / "resnet18.yaml")
    return {k: v.clone() for k, v in build_module(compile_spec(spec)).state_dict().items()}


def test_mismatch_lists_first_keys_with_shapes_and_writes_nothing(tmp_path, run_cli):
    state = _resnet18_state(tmp_path)
    state["fc.weight"] = torch.zeros(10, 512)
    state["fc.bias"] = torch.zeros(10)
    state["extra.weight"] = torch.zeros(3)
    del state["layer4.1.conv2.weight"]
    torch.save(state, tmp_path / "bad.pth")
    out = tmp_path / "bad.safetensors"
    result = run_cli("import-weights", tmp_path / "bad.pth", "--spec", SPECS / "resnet18.yaml",
                     "-o", out)
    assert result.code == 2, result
    assert "2 wrong shapes, 1 missing, 1 unexpected" in result.err
    assert "fc.weight: expected shape [1000, 512], got [10, 512]" in result.err
    assert "layer4.1.conv2.weight: missing" in result.err and "[512, 512, 3, 3]" in result.err
    assert "extra.weight: not a parameter of resnet18 (shape [3])" in result.err
    assert "--allow-partial" in result.err
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []


def test_allow_partial_writes_only_what_fits(tmp_path, run_cli):
    state = _resnet18_state(tmp_path)
    state["fc.weight"] = torch.zeros(10, 512)
    del state["layer4.1.bn2.num_batches_tracked"]  # filled with 0, not a mismatch
    torch.save(state, tmp_path / "partial.pth")
    out = tmp_path / "partial.safetensors"
    result = run_cli("import-weights", tmp_path / "partial.pth", "--spec",
                     SPECS / "resnet18.yaml", "-o", out, "--allow-partial")
    assert result.code == 0, result
    assert "skipped fc.weight: expected shape [1000, 512], got [10, 512]" in result.err
    tensors = load_file(out)
    assert "fc.weight" not in tensors and len(tensors) == 122 - 1  # resnet18 has 122 tensors
    assert tensors["layer4.1.bn2.num_batches_tracked"] == 0
    np.testing.assert_array_equal(tensors["layer1.0.conv1.weight"],
                                  state["layer1.0.conv1.weight"].numpy())


def test_pickled_code_is_refused(tmp_path, run_cli):
    """torch.load(weights_only=True): a checkpoint holding arbitrary objects is not unpickled."""
    state = _resnet18_state(tmp_path)
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ckpt.pth")
    result = run_cli("import-weights", tmp_path / "ckpt.pth", "--spec", SPECS / "resnet18.yaml",
                     "-o", tmp_path / "x.safetensors")
    assert result.code == 2 and "cannot read as a PyTorch checkpoint" in result.err


def test_senet_port_names_are_renamed():
    assert rename("module.layer0.conv1.weight") == "conv1.weight"
    assert rename("layer0.bn1.running_mean") == "bn1.running_mean"
    assert rename("layer2.3.se_module.fc1.bias") == "layer2.3.se.fc1.bias"
    assert rename("last_linear.weight") == "fc.weight"
    assert rename("layer1.0.conv1.weight") == "layer1.0.conv1.weight"


def test_output_must_be_safetensors_and_source_must_exist(tmp_path, run_cli):
    spec = SPECS / "resnet18.yaml"
    result = run_cli("import-weights", tmp_path / "none.pth", "--spec", spec, "-o",
                     tmp_path / "x.safetensors")
    assert result.code == 2 and "weights file not found" in result.err
    result = run_cli("import-weights", tmp_path / "none.pth", "--spec", spec, "-o",
                     tmp_path / "x.pth")
    assert result.code == 2 and "must end in .safetensors" in result.err


def test_console_script_exit_code_without_traceback(tmp_path):
    """The installed entry point as a user runs it: exit 2, one clean message."""
    model = sequential(Module("nn.Linear", {"weight": np.ones((2, 3)), "bias": np.zeros(2)}))
    t7 = write_t7(tmp_path / "linear.t7", model)
    proc = subprocess.run(
        [sys.executable, "-m", "resnext_compiler.cli", "import-weights", str(t7),
         "--spec", str(SPECS / "resnet18.yaml"), "-o", str(tmp_path / "x.safetensors")],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "the .t7 has 1 conv/BN/linear layers, resnet18 needs 41" in proc.stderr


def _imported_seed_t7(tmp_path, write_spec, run_cli):  # noqa: ANN001, ANN202 - fixtures
    """(spec, a seed-layout form-B .t7 of the tiny spec, the safetensors `import-weights`
    wrote from it)."""
    spec_path = write_spec(TINY_SEED)
    _, weights = _tiny_seed_reference("B", spec_path)
    rng = np.random.default_rng(3)
    t7 = write_t7(tmp_path / "seed.t7", seed_model(weights, TINY_SEED_STAGES, "B", 4, rng))
    out = tmp_path / "seed.safetensors"
    assert run_cli("import-weights", t7, "--spec", spec_path, "-o", out).code == 0
    return spec_path, t7, out


def test_opencv_runs_the_seed_torch7_model_to_our_logits(tmp_path, write_spec, run_cli):
    """OpenCV's own Torch7 reader runs the seed-layout .t7 (form B) to the logits of our
    model with the weights `import-weights` read from the same file."""
    cv2 = pytest.importorskip("cv2")
    spec_path, t7, out = _imported_seed_t7(tmp_path, write_spec, run_cli)
    x = np.random.default_rng(5).normal(size=(2, 3, 16, 16)).astype(np.float32)
    net = cv2.dnn.readNetFromTorch(str(t7))
    net.setInput(x)
    theirs = net.forward()
    with torch.no_grad():
        ours = _ours(spec_path, out)(torch.from_numpy(x)).numpy()
    assert theirs.shape == ours.shape == (2, 10)
    assert np.abs(ours).max() > 0.1
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()


def test_model_weights_reads_a_torch7_file_like_import_weights(tmp_path, write_spec, run_cli):
    """Every importer has one signature and `weights.model_weights` reads through it, so
    `--weights seed.t7` gives the tensors `import-weights` writes."""
    from resnext_compiler.weights import model_weights

    spec_path, t7, out = _imported_seed_t7(tmp_path, write_spec, run_cli)
    imported = load_file(out)
    loaded = model_weights(compile_spec(load_spec(spec_path)), t7)
    assert set(loaded) == set(imported)
    for name, value in imported.items():
        np.testing.assert_allclose(np.asarray(loaded[name], value.dtype), value, rtol=1e-6)
