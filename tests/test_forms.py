"""Block forms A/B/C (Xie et al. 2017, Fig. 3): the rewrite pass, weight mapping, equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SPECS, random_ir_weights

from resnext_compiler.backends.torch_module import build_module
from resnext_compiler.passes.complexity import analyse
from resnext_compiler.passes.forms import convert_weights, find_branches, rewrite_forms
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec, parse_spec, with_form

TINY = """
name: tiny_forms
input: {{channels: 3, height: 16, width: 16}}
stem: cifar
block: {{cardinality: 4, base_width: 8, preact: {preact}, se_ratio: {se}}}
shortcut: {shortcut}
stages: [{{depth: 2, width: 16}}, {{depth: 1, width: 32}}]
head: {{num_classes: 5}}
"""
VARIANTS = {
    "plain": dict(preact="false", se="0", shortcut="B"),
    "preact_shortcut_C": dict(preact="true", se="0", shortcut="C"),
    "se_shortcut_A": dict(preact="false", se="0.25", shortcut="A"),
}


def _spec(variant: str = "plain"):
    return parse_spec(TINY.format(**VARIANTS[variant]))


def _random_state(graph, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 weights with non-trivial BN statistics, keyed by IR names."""
    return random_ir_weights(graph, seed, std=0.3)


def _outputs(graph, tensors, x):
    model = build_module(graph).double().eval()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()})
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("source", ["A", "B", "C"])
@pytest.mark.parametrize("target", ["A", "B", "C"])
def test_rewrite_equals_lowering_the_spec_in_that_form(variant, source, target):
    spec = _spec(variant)
    rewritten = rewrite_forms(compile_spec(with_form(spec, source)), target)
    lowered = compile_spec(with_form(spec, target))
    assert rewritten.nodes == lowered.nodes  # names, ops, inputs, stages and spec origins
    assert rewritten.shapes == lowered.shapes
    assert rewritten.output == lowered.output


def test_rewrite_leaves_basic_blocks_and_the_input_graph_alone():
    graph = compile_spec(load_spec(SPECS / "resnet18.yaml"))
    assert find_branches(graph) == []
    assert rewrite_forms(graph, "A") is graph
    spec = _spec()
    c_graph = compile_spec(spec)
    before = c_graph.nodes
    rewrite_forms(c_graph, "A")
    assert c_graph.nodes == before


def test_branches_report_cardinality_and_path_width():
    branches = find_branches(compile_spec(with_form(_spec(), "A")))
    assert [b.prefix for b in branches] == ["layer1.0", "layer1.1", "layer2.0"]
    assert [(b.form, b.cardinality, b.path_width) for b in branches] == [
        ("A", 4, 2), ("A", 4, 2), ("A", 4, 4)]


@pytest.mark.parametrize("name", ["resnext50_32x4d", "resnet50"])
def test_all_forms_have_the_same_parameter_count(name):
    spec = load_spec(SPECS / f"{name}.yaml")
    counts = {form: analyse(compile_spec(with_form(spec, form))).params for form in "ABC"}
    expected = {"resnext50_32x4d": 25_028_904, "resnet50": 25_557_032}[name]
    assert counts == {"A": expected, "B": expected, "C": expected}
    buffers = {form: analyse(compile_spec(with_form(spec, form))).buffers for form in "BC"}
    # Per-path BN statistics are slices of the grouped BN's; only the step counters multiply.
    float_buffers = {form: sum(p.numel for p in compile_spec(with_form(spec, form)).params()
                               if not p.trainable and p.dtype == "float32") for form in "BC"}
    assert float_buffers["B"] == float_buffers["C"]
    cardinality = spec.block.cardinality
    assert buffers["B"] - buffers["C"] == 16 * 2 * (cardinality - 1)  # 16 blocks, 2 BNs/path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forms_compute_the_same_function_with_corresponding_weights(variant):
    spec = _spec(variant)
    graphs = {form: compile_spec(with_form(spec, form)) for form in "ABC"}
    weights_c = _random_state(graphs["C"])
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reference = _outputs(graphs["C"], weights_c, x)
    assert reference.abs().max() > 0.1  # a non-degenerate output
    for form in "AB":
        out = _outputs(graphs[form], convert_weights(weights_c, graphs[form]), x)
        assert (out - reference).abs().max().item() <= 1e-5


def test_weights_round_trip_between_forms_exactly():
    spec = _spec()
    graphs = {form: compile_spec(with_form(spec, form)) for form in "ABC"}
    weights_c = _random_state(graphs["C"])
    weights_a = convert_weights(weights_c, graphs["A"])
    assert {p.name: p.shape for p in graphs["A"].params()} == {
        k: v.shape for k, v in weights_a.items()}
    weights_b = convert_weights(weights_a, graphs["B"])  # A -> B directly
    back = convert_weights(weights_b, graphs["C"])
    assert back.keys() == weights_c.keys()
    for key, value in weights_c.items():
        np.testing.assert_array_equal(back[key], value)
    # Path i of conv2 is group i of the grouped conv: rows [i*d, (i+1)*d).
    np.testing.assert_array_equal(weights_a["layer2.0.paths.3.conv2.weight"],
                                  weights_c["layer2.0.conv2.weight"][12:16])
    # Form A's conv3 of path i reads the grouped conv3's input columns of that path.
    np.testing.assert_array_equal(weights_a["layer2.0.paths.1.conv3.weight"],
                                  weights_c["layer2.0.conv3.weight"][:, 4:8])
    assert "layer2.0.conv3.weight" in weights_b and "layer2.0.paths.0.conv3.weight" not in weights_b


def test_convert_weights_does_not_modify_its_input():
    spec = _spec()
    graph_c = compile_spec(spec)
    weights = _random_state(graph_c)
    snapshot = {k: v.copy() for k, v in weights.items()}
    convert_weights(weights, compile_spec(with_form(spec, "A")))
    assert weights.keys() == snapshot.keys()
    assert all(np.array_equal(weights[k], snapshot[k]) for k in weights)


def test_convert_weights_rejects_a_different_cardinality():
    spec = _spec()
    weights_a = convert_weights(_random_state(compile_spec(spec)),
                                compile_spec(with_form(spec, "A")))
    wider = parse_spec(TINY.format(**VARIANTS["plain"]).replace("cardinality: 4",
                                                                "cardinality: 8"))
    with pytest.raises(ValueError, match="4 paths"):
        convert_weights(weights_a, compile_spec(wider))


def test_cli_moves_weights_between_forms_and_outputs_agree(run_cli, write_spec, tmp_path):
    """As a user would: import a form-C state dict for each --form, run each form's module."""
    from safetensors.numpy import load_file

    path = write_spec(TINY.format(**VARIANTS["se_shortcut_A"]))
    spec = load_spec(path)
    weights_c = _random_state(compile_spec(spec))
    torch.save({k: torch.from_numpy(np.asarray(v, dtype=np.int64 if v.dtype == np.int64
                                               else np.float32)) for k, v in weights_c.items()},
               tmp_path / "c.pth")
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outputs = {}
    for form in "ABC":
        out = tmp_path / f"{form}.safetensors"
        result = run_cli("import-weights", tmp_path / "c.pth", "--spec", path, "--form", form,
                         "-o", out)
        assert result.code == 0, result
        graph = compile_spec(with_form(spec, form))
        tensors = load_file(out)
        assert set(tensors) == {p.name for p in graph.params()}
        outputs[form] = _outputs(graph, tensors, x)
    assert (outputs["A"] - outputs["C"]).abs().max().item() <= 1e-5
    assert (outputs["B"] - outputs["C"]).abs().max().item() <= 1e-5
    bad = run_cli("import-weights", tmp_path / "c.pth", "--spec", path, "--form", "D",
                  "-o", tmp_path / "d.safetensors")
    assert bad.code == 2 and "'--form': must be one of A, B, C, got 'D'" in bad.err


def test_needs_conversion_reads_the_form_from_weight_names():
    from resnext_compiler.passes.forms import needs_conversion

    spec = _spec()
    graph_c, graph_a = compile_spec(spec), compile_spec(with_form(spec, "A"))
    names_c = [p.name for p in graph_c.params()]
    assert not needs_conversion(names_c, graph_c)
    assert needs_conversion(names_c, graph_a)
    assert not needs_conversion([p.name for p in graph_a.params()], graph_a)


def _onnx_outputs_per_form(run_cli, spec_path, tmp_path, weights_for, x) -> dict:
    """Compile SPEC with `--form F --weights weights_for(F)` to ONNX for F in A, B, C; run each."""
    ort = pytest.importorskip("onnxruntime")
    outputs = {}
    for form in "ABC":
        onnx_file = tmp_path / f"{form}.onnx"
        result = run_cli(spec_path, "--form", form, "--weights", weights_for(form),
                         "--backend", "onnx", "-o", onnx_file)
        assert result.code == 0, result
        session = ort.InferenceSession(str(onnx_file))
        outputs[form] = session.run(None, {session.get_inputs()[0].name: x})[0]
    return outputs


def test_cli_onnx_export_of_each_form_gives_the_same_outputs(run_cli, write_spec, tmp_path):
    """import-weights --form F, then `resnext-compile SPEC --form F --weights` to ONNX."""
    path = write_spec(TINY.format(**VARIANTS["plain"]))
    model = build_module(compile_spec(load_spec(path)), seed=5)
    torch.save(model.state_dict(), tmp_path / "c.pth")

    def imported(form: str):
        weights = tmp_path / f"{form}.safetensors"
        assert run_cli("import-weights", tmp_path / "c.pth", "--spec", path, "--form", form,
                       "-o", weights).code == 0
        return weights

    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    outputs = _onnx_outputs_per_form(run_cli, path, tmp_path, imported, x)
    assert np.abs(outputs["C"]).max() > 0.01
    assert np.abs(outputs["A"] - outputs["C"]).max() <= 1e-4  # float32
    assert np.abs(outputs["B"] - outputs["C"]).max() <= 1e-4


def test_cli_compiles_form_c_weights_into_another_form_directly(run_cli, write_spec, tmp_path):
    """`resnext-compile SPEC --form A --weights C.pth`: the loader maps the weights itself."""
    path = write_spec(TINY.format(**VARIANTS["plain"]))
    model = build_module(compile_spec(load_spec(path)), seed=7)
    torch.save(model.state_dict(), tmp_path / "c.pth")
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    outputs = _onnx_outputs_per_form(run_cli, path, tmp_path, lambda form: tmp_path / "c.pth", x)
    assert np.abs(outputs["A"] - outputs["C"]).max() <= 1e-4
    assert np.abs(outputs["B"] - outputs["C"]).max() <= 1e-4
