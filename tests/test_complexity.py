"""Parameter counts and MACs from the IR alone, against torchvision and the paper."""

from __future__ import annotations

import pytest
from conftest import SPECS

from resnext_compiler.passes.complexity import analyse
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec, parse_spec

# torchvision's parameter counts; CIFAR: Xie et al. 2017, Table 7 (34.4M, 68.1M).
PARAMS = {
    "resnet50": 25_557_032,
    "resnext50_32x4d": 25_028_904,
    "resnext101_64x4d": 83_455_272,
    "resnext29_8x64d": 34_426_698,
    "resnext29_16x64d": 68_155_210,
}
# torchvision's "GFLOPS" (multiply-accumulates) at 224x224.
GMACS = {"resnet50": 4.09, "resnext50_32x4d": 4.23, "resnext101_64x4d": 15.46}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_reference(name):
    cost = analyse(compile_spec(load_spec(SPECS / f"{name}.yaml")))
    assert cost.params == PARAMS[name]


@pytest.mark.parametrize("name", sorted(GMACS))
def test_macs_match_torchvision_within_one_percent(name):
    cost = analyse(compile_spec(load_spec(SPECS / f"{name}.yaml")))
    assert cost.macs / 1e9 == pytest.approx(GMACS[name], rel=0.01)


def test_seed_table_gflops_are_reproduced_to_one_decimal():
    # facebookresearch/ResNeXt README: ResNet-50 4.1, ResNeXt-50 4.1, ResNeXt-101 64x4d 15.6
    # (the seed counts slightly more than torchvision; one decimal is what it prints).
    for name, seed in [("resnet50", 4.1), ("resnext50_32x4d", 4.1), ("resnext101_32x4d", 7.8)]:
        cost = analyse(compile_spec(load_spec(SPECS / f"{name}.yaml")))
        assert abs(cost.macs / 1e9 - seed) < 0.2


def test_stage_costs_add_up_to_the_total():
    cost = analyse(compile_spec(load_spec(SPECS / "resnext50_32x4d.yaml")))
    assert [s.name for s in cost.stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(s.params for s in cost.stages) == cost.params
    assert sum(s.macs for s in cost.stages) == cost.macs
    assert [s.blocks for s in cost.stages[1:5]] == [3, 4, 6, 3]
    assert cost.stages[4].output_shape.as_list() == [2048, 7, 7]


def test_stage1_block_of_resnext_holds_about_70k_params_like_eq4():
    # Xie et al. Eq. 4: C * (256 d + 9 d^2 + d 256) with C=32, d=4 -> 70,144 conv weights.
    graph = compile_spec(load_spec(SPECS / "resnext50_32x4d.yaml"))
    convs = [n for n in graph.nodes if n.block == "layer1.1" and n.op.kind == "conv"]
    assert sum(p.numel for n in convs for p in n.param_specs()) == 32 * (256 * 4 + 9 * 16 + 4 * 256)


def test_activation_memory_counts_every_node_output():
    graph = compile_spec(
        parse_spec(
            "name: n\nstem: cifar\ninput: {height: 8, width: 8}\n"
            "stages: [1]\nhead: {num_classes: 3}\n"
        )
    )
    cost = analyse(graph)
    assert cost.activation_bytes == 4 * sum(s.numel for s in graph.shapes.values())
