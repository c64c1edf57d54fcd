"""The in-memory PyTorch backend against torchvision: names, shapes, init, outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import SPECS

from resnext_compiler.backends.torch_module import build_module, load_weights
from resnext_compiler.errors import UserError
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec, parse_spec

torchvision = pytest.importorskip("torchvision")


def _module(name: str) -> torch.nn.Module:
    return build_module(compile_spec(load_spec(SPECS / f"{name}.yaml")))


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_state_dict_keys_and_shapes_equal_torchvision(name):
    ours = _module(name).state_dict()
    theirs = getattr(torchvision.models, name)().state_dict()
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()
    }


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_outputs_equal_torchvision_with_its_weights(name):
    torch.manual_seed(1)
    reference = getattr(torchvision.models, name)().eval()
    # Non-trivial BN statistics, so the check covers running stats too.
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    ours = _module(name).eval()
    load_weights(ours, reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5, rtol=0)


def test_parameter_count_equals_the_ir():
    graph = compile_spec(load_spec(SPECS / "resnext29_8x64d.yaml"))
    model = build_module(graph)
    assert sum(p.numel() for p in model.parameters()) == 34_426_698
    assert set(model.state_dict()) == {p.name for p in graph.params()}


def test_initialisation_follows_torchvision():
    spec = parse_spec(
        "name: n\nstem: cifar\ninput: {height: 8, width: 8}\n"
        "block: {cardinality: 2, zero_init_last_bn: true}\nstages: [2]\n"
    )
    model = build_module(compile_spec(spec), seed=3)
    sd = model.state_dict()
    assert torch.all(sd["layer1.0.bn1.weight"] == 1) and torch.all(sd["layer1.0.bn1.bias"] == 0)
    assert torch.all(sd["layer1.0.bn3.weight"] == 0) and torch.all(sd["layer1.1.bn3.weight"] == 0)
    assert torch.all(sd["layer1.0.downsample.1.weight"] == 1)
    w = sd["conv1.weight"]  # Kaiming normal, fan_out = 64 * 3 * 3 -> std sqrt(2 / 576)
    assert w.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.15)


def test_torch_module_and_numpy_weights_follow_the_same_rule():
    from resnext_compiler.initialisation import Constant, Normal, parameter_starts
    from resnext_compiler.weights import InitialWeights

    graph = compile_spec(parse_spec(
        "name: n\nstem: cifar\ninput: {height: 8, width: 8}\n"
        "block: {cardinality: 8, base_width: 16, zero_init_last_bn: true}\n"
        "stages: [1, 1]\nhead: {num_classes: 300}\n"))
    from_torch = build_module(graph, seed=1).state_dict()
    from_numpy = InitialWeights(graph, 1)
    for param, start in parameter_starts(graph):
        ours, theirs = from_torch[param.name].double(), torch.from_numpy(
            from_numpy[param.name]).double()
        if isinstance(start, Constant):
            assert torch.all(ours == start.value) and torch.all(theirs == start.value)
        elif param.numel >= 4096:  # large enough for the spread to say which distribution
            assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.1), param.name
            normal = isinstance(start, Normal)
            for values in (ours, theirs):  # normal: some beyond 2 std; uniform: none
                beyond = (values.abs() > 2 * values.std()).double().mean().item()
                assert (beyond > 0.02) == normal, param.name


def test_same_seed_same_weights_different_seed_different_weights():
    graph = compile_spec(
        parse_spec("name: n\nstem: cifar\ninput: {height: 8, width: 8}\nstages: [1]\n")
    )
    a, b, c = (build_module(graph, seed=s).state_dict() for s in (5, 5, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_building_does_not_disturb_the_global_rng():
    graph = compile_spec(
        parse_spec("name: n\nstem: cifar\ninput: {height: 8, width: 8}\nstages: [1]\n")
    )
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_module(graph, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_wrong_weights_list_mismatching_keys_and_shapes():
    model = _module("resnet50")
    weights = dict(model.state_dict())
    weights["fc.weight"] = torch.zeros(10, 2048)
    del weights["fc.bias"]
    with pytest.raises(UserError) as info:
        load_weights(model, weights)
    text = str(info.value)
    assert "fc.weight: expected shape [1000, 2048], got [10, 2048]" in text
    assert "fc.bias: missing (expected shape [1000])" in text


def test_module_works_with_torch_script_free_features():
    # DDP and torch.compile need a plain module: deepcopy and train/eval must work.
    import copy

    graph = compile_spec(
        parse_spec(
            "name: n\nstem: cifar\ninput: {height: 8, width: 8}\n"
            "stages: [1]\nhead: {num_classes: 3, dropout: 0.5}\n"
        )
    )
    model = copy.deepcopy(build_module(graph)).train()
    out = model(torch.randn(4, 3, 8, 8))
    out.sum().backward()
    assert out.shape == (4, 3) and model.conv1.weight.grad is not None
