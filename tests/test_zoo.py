"""The model zoo: parameter counts, MACs, timm layouts and outputs, the generated table."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO, SPECS

from resnext_compiler.backends.torch_module import build_module
from resnext_compiler.importers import import_weights
from resnext_compiler.passes.complexity import analyse
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec

# torchvision / timm parameter counts (the list; `sum(p.numel() for p in parameters())`).
PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "resnext29_8x64d": 34_426_698,
    "resnext29_16x64d": 68_155_210,
    "seresnext50_32x4d": 27_559_896,
    "resnext50d_32x4d": 25_048_136,
    "skresnext50_32x4d": 27_479_784,
}
# torchvision's documented GFLOPS (multiply-accumulates at 224x224).
GMACS = {"resnext101_32x8d": 16.41, "resnet101": 7.80, "resnet152": 11.51, "resnet50": 4.09,
         "resnext50_32x4d": 4.23}
ZOO = sorted(p.stem for p in SPECS.glob("*.yaml"))


def _cost(name: str):
    return analyse(compile_spec(load_spec(SPECS / f"{name}.yaml")))


def test_the_zoo_has_all_fifteen_networks():
    assert len(ZOO) == 15
    assert set(PARAMS) | {"resnext152_32x4d"} == set(ZOO)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_the_reference(name):
    assert _cost(name).params == PARAMS[name]


@pytest.mark.parametrize("name", sorted(GMACS))
def test_macs_within_one_percent_of_torchvision(name):
    assert _cost(name).macs / 1e9 == pytest.approx(GMACS[name], rel=0.01)


@pytest.mark.parametrize("name", ZOO)
def test_every_spec_describes_and_cites_its_source(name):
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.name == name
    assert any(source in spec.description for source in (
        "Xie et al. 2017", "He et al. 2016", "He et al. 2019", "Hu et al. 2018", "torchvision",
        "timm"))


@pytest.mark.parametrize("name", ["seresnext50_32x4d", "resnext50d_32x4d"])
def test_state_dict_keys_and_shapes_equal_timm(name):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(name, pretrained=False).state_dict()
    ours = compile_spec(load_spec(SPECS / f"{name}.yaml")).params()
    assert [p.name for p in ours] == list(theirs)
    assert all(p.shape == tuple(theirs[p.name].shape) for p in ours)


@pytest.mark.parametrize("name", ["seresnext50_32x4d", "resnext50d_32x4d"])
def test_outputs_equal_timm_with_timm_weights(name, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the comparison means something
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    source = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), source)
    result = import_weights(source, load_spec(SPECS / f"{name}.yaml"))
    ours = build_module(compile_spec(load_spec(SPECS / f"{name}.yaml"))).eval()
    ours.load_state_dict({k: torch.from_numpy(v) for k, v in result.tensors.items()})
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.abs().max() > 1e-3
    assert (got - expected).abs().max().item() <= 1e-5


def _zoo_table_module():
    spec = importlib.util.spec_from_file_location("zoo_table", REPO / "scripts" / "zoo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zoo_table_is_generated_from_the_specs(tmp_path, capsys):
    zoo_table = _zoo_table_module()
    document = tmp_path / "zoo.md"
    document.write_text("# Zoo\n\nintro text\n")
    assert zoo_table.main(["--specs", str(SPECS), "--output", str(document)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in printed.splitlines() if line.startswith("| [")}
    assert len(rows) == 15
    r50 = next(cells for key, cells in rows.items() if key.startswith("[resnext50_32x4d]"))
    # depth, C x d, variant, input, params, GMACs, seed top-1 error
    assert r50 == ["50", "32x4d", "-", "224x224", "25,028,904", "4.23", "22.2"]
    r101 = next(cells for key, cells in rows.items() if key.startswith("[resnet101]"))
    assert r101[4:] == ["44,549,160", "7.80", "22.0"]
    cifar = next(cells for key, cells in rows.items() if key.startswith("[resnext29_16x64d]"))
    assert cifar[-1] == "CIFAR-10 3.58"
    text = document.read_text()
    assert text.startswith("# Zoo\n\nintro text\n") and printed.strip() in text
    # Re-running replaces the marked region instead of appending another table.
    zoo_table.main(["--specs", str(SPECS), "--output", str(document)])
    assert document.read_text() == text


def test_docs_zoo_table_is_up_to_date():
    """docs/zoo.md holds exactly what the script generates from today's specs."""
    zoo_table = _zoo_table_module()
    document = REPO / "docs" / "zoo.md"
    assert zoo_table.zoo_table(SPECS, document.parent) in document.read_text()


def test_imported_weights_are_float32_with_int64_counters(tmp_path):
    spec = load_spec(SPECS / "resnet18.yaml")
    state = build_module(compile_spec(spec)).state_dict()
    torch.save({k: v.double() if v.is_floating_point() else v for k, v in state.items()},
               tmp_path / "r18.pth")
    tensors = import_weights(tmp_path / "r18.pth", spec).tensors
    assert tensors["layer1.0.conv1.weight"].dtype == np.float32
    assert tensors["bn1.num_batches_tracked"].dtype == np.int64


def test_readme_zoo_table_is_up_to_date():
    """README.md carries the same generated table (links relative to the repo root)."""
    zoo_table = _zoo_table_module()
    document = REPO / "README.md"
    assert zoo_table.zoo_table(SPECS, document.parent) in document.read_text()
