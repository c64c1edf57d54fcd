"""Hostile ONNX models: small files that expand, metadata out of range, names that forge output.

Each is refused before onnxruntime allocates (exit 2 / UserError, located: which node or
initializer, how many bytes), within a time and memory bound; a model whose sizes are known
only when it runs is warmed up in a memory-limited child. Models are built here, in bytes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_inputs import GiB, MiB, refused_within, run_cli_bounded, sparse
from onnx import TensorProto, helper, numpy_helper
from test_serve_helpers import write_tiny_onnx

from resnext_compiler.errors import EscapeLogArguments, UserError
from resnext_compiler.onnx_cost import memory_budget, read_structure
from resnext_compiler.protobuf_wire import frame, tag, varint
from resnext_compiler.runtimes.serve.model import LoadedModel
from resnext_compiler.runtimes.serve.repository import ModelSource, find_models

SECONDS = 5.0
PEAK = 150 * MiB
HUGE = 2**40  # elements: refused on any machine by the default budget


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def image_model(nodes: list, initializers: list, extra_outputs: tuple[str, ...] = (),
                size: int = 8, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """input [N, 3, size, size] -> (nodes) -> logits [N, 10] (a Gemm on the pooled input),
    plus `extra_outputs` of the hostile nodes."""
    weight = numpy_helper.from_array(np.ones((10, 3), np.float32), "fc.w")
    body = [helper.make_node("GlobalAveragePool", ["input"], ["pool"]),
            helper.make_node("Flatten", ["pool"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fc.w"], ["logits"], transB=1)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                for name in extra_outputs]
    graph = helper.make_graph(
        body + nodes, "hostile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        outputs, initializer=[weight, *initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    return model


def ints(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def floats(name: str, values: list[float]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, np.float32), name)


def load(path: Path, **kwargs) -> LoadedModel:
    return LoadedModel(ModelSource("m", "1", path), "cpu", max_batch=kwargs.pop("max_batch", 4),
                       intra_op_threads=1, **kwargs)


def refused(path: Path, *fragments: str, seconds: float = SECONDS, **kwargs) -> str:
    error = refused_within(lambda: load(path, **kwargs), UserError, seconds, PEAK)
    message = str(error)
    assert message.startswith(f"{path}: ") or str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- operators that expand, their sizes computed from constants --------------------------

EXPANDING = {
    # the 293-byte file: ConstantOfShape of [2**31] floats, here at 2**40
    "constant_of_shape": ([helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos")],
                          [ints("shape", [HUGE])], "node 'cos' (ConstantOfShape)"),
    # Expand to [N, 2**40] with the shape computed from the input's: data propagation
    "expand": ([helper.make_node("Shape", ["pool"], ["s"], start=0, end=3),
                helper.make_node("Concat", ["s", "width"], ["target"], axis=0),
                helper.make_node("Expand", ["pool", "target"], ["big"], name="exp")],
               [ints("width", [HUGE // 4])], "node 'exp' (Expand)"),
    "tile": ([helper.make_node("Tile", ["input", "reps"], ["big"], name="tile")],
             [ints("reps", [1, 1, 2**20, 2**20])], "node 'tile' (Tile)"),
    "resize": ([helper.make_node("Resize", ["input", "", "scales"], ["big"], name="up")],
               [floats("scales", [1, 1, 2**18, 2**18])], "node 'up' (Resize)"),
    "pad": ([helper.make_node("Pad", ["input", "pads"], ["big"], name="pad")],
            [ints("pads", [0, 0, 2**20, 2**20, 0, 0, 2**20, 2**20])], "node 'pad' (Pad)"),
    "range": ([helper.make_node("Range", ["start", "limit", "delta"], ["big"], name="rng")],
              [numpy_helper.from_array(np.array(value, np.float32), name) for name, value
               in (("start", 0.0), ("limit", float(HUGE)), ("delta", 1.0))],
              "node 'rng' (Range)"),
    "reshape_of_constant": ([helper.make_node("ConstantOfShape", ["shape"], ["c"], name="cos"),
                             helper.make_node("Reshape", ["c", "to"], ["big"], name="rs")],
                            [ints("shape", [2**20, 2**20]), ints("to", [-1])], "2**20"),
    "concat_with_itself": ([helper.make_node("ConstantOfShape", ["shape"], ["c"]),
                            helper.make_node("Concat", ["c"] * 64, ["big"], axis=0,
                                             name="cat")],
                           [ints("shape", [2**36])], "(Concat)"),
    "matmul_outer_product": ([helper.make_node("ConstantOfShape", ["a"], ["col"]),
                              helper.make_node("ConstantOfShape", ["b"], ["row"]),
                              helper.make_node("MatMul", ["col", "row"], ["big"], name="outer")],
                             [ints("a", [2**20, 1]), ints("b", [1, 2**20])],
                             "node 'outer' (MatMul)"),
}


@pytest.mark.parametrize("case", sorted(EXPANDING))
def test_expanding_operator_is_refused_before_it_runs(tmp_path: Path, case: str) -> None:
    nodes, initializers, where = EXPANDING[case]
    model = image_model(nodes, initializers, ("big",))
    path = save(model, tmp_path / f"{case}.onnx")
    assert path.stat().st_size < 2000
    message = refused(path, "lower --max-batch or raise --max-memory-gb", "bytes")
    if where != "2**20":
        assert where in message, message
    assert "over the memory budget of" in message and "half of" in message


def test_constant_of_shape_2_31_is_refused_under_an_explicit_budget(tmp_path: Path) -> None:
    """The issue's exact file (8 GiB of floats) against a 1 GiB budget."""
    model = image_model([helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos")],
                        [ints("shape", [2**31])], ("big",))
    path = save(model, tmp_path / "cos.onnx")
    refused(path, "node 'cos' (ConstantOfShape) output 'big' [2147483648], 8,589,934,592 "
            "bytes", "(--max-memory-gb)", max_memory_bytes=GiB)


def test_static_input_30000_square_is_refused_by_the_machine_budget(tmp_path: Path) -> None:
    """A static 30000x30000 input (10.8 GB at batch 1): the default budget is half of the
    machine's memory, here an 8 GiB address-space limit, not a fixed 64 GiB."""
    path = write_tiny_onnx(tmp_path / "wide.onnx", size=30000, batch=1)
    run = run_cli_bounded("serve", path, "--port", "0", address_space=8 * GiB)
    assert run.code == 2, run
    assert "running it at batch 1 needs about" in run.err, run
    assert "half of the address-space limit (ulimit -v)" in run.err, run
    assert run.seconds < 30 and run.peak_bytes < 400 * MiB, run


def test_budget_defaults_to_half_the_machine() -> None:
    budget, origin = memory_budget()
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < budget <= physical // 2 and origin.startswith("half of")
    assert memory_budget(5 * GiB) == (5 * GiB, "--max-memory-gb")


def test_initializer_declaring_terabytes_is_refused_unread(tmp_path: Path) -> None:
    """An initializer whose data lives outside the file declares 2**40 floats: its declared
    size counts, and nothing is read (the external file is a few bytes: its name is checked,
    its contents are not)."""
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**20, 2**20])
    huge.data_location = TensorProto.EXTERNAL
    huge.external_data.add(key="location", value="weights.bin")
    model = image_model([helper.make_node("Identity", ["w"], ["big"])], [huge], ("big",))
    path = save(model, tmp_path / "external.onnx")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    refused(path, "initializer 'w' [1048576, 1048576], 4,398,046,511,104 bytes")


def test_sparse_initializer_declaring_terabytes_is_refused(tmp_path: Path) -> None:
    values = numpy_helper.from_array(np.ones(1, np.float32), "w")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "w_idx")
    sparse_tensor = helper.make_sparse_tensor(values, indices, [2**20, 2**20])
    model = image_model([helper.make_node("Identity", ["w"], ["big"])], [], ("big",))
    model.graph.sparse_initializer.append(sparse_tensor)
    path = save(model, tmp_path / "sparse.onnx")
    refused(path, "initializer 'w' [1048576, 1048576]")


def _model_with_sparse_tail(path: Path, data_bytes: int) -> Path:
    """A valid model whose last initializer's raw_data is `data_bytes` of holes: the file
    claims gigabytes that a reader holding it whole would pay for twice."""
    model = image_model([helper.make_node("Identity", ["w"], ["big"])], [], ("big",))
    head = model.SerializeToString()
    tensor = (tag(1, 0) + varint(data_bytes // 4) + tag(2, 0) + varint(TensorProto.FLOAT)
              + frame(8, 1) + b"w" + frame(9, data_bytes))
    graph_fields = frame(5, len(tensor) + data_bytes) + tensor
    # the model's graph (field 7) is extended by one more initializer at its end
    graph = model.graph.SerializeToString()
    others = head.replace(frame(7, len(graph)) + graph, b"")
    prefix = others + frame(7, len(graph) + len(graph_fields) + data_bytes) + graph + graph_fields
    return sparse(path, len(prefix) + data_bytes, prefix)


def test_inspect_of_a_sparse_1_9_gb_onnx_reads_only_its_structure(tmp_path: Path) -> None:
    path = _model_with_sparse_tail(tmp_path / "sparse.onnx", 1900 * 1000 * 1000)
    assert path.stat().st_size > 1.9e9
    structure = refused_within(lambda: (_ for _ in ()).throw(UserError(
        str(read_structure(path).initializers))), UserError, SECONDS, PEAK)
    assert "Initializer(name='w', elem_type=1, dims=(475000000,), external=None)" in str(
        structure)
    run = run_cli_bounded("inspect", path)
    assert run.code == 0 and "records no input contract" in run.out, run
    assert run.peak_bytes < 400 * MiB, run  # 3.8 GB when read whole


def test_onnx_file_over_2_gib_is_refused_by_its_size(tmp_path: Path) -> None:
    path = sparse(tmp_path / "big.onnx", 3 * GiB, b"\x08\x08")
    error = refused_within(lambda: read_structure(path), UserError, SECONDS, PEAK)
    assert "over protobuf's 2 GiB limit" in str(error)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_onnx_path_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.onnx"
    if kind == "directory":
        path.mkdir()
        (path / "x").write_text("")
        error = refused_within(lambda: read_structure(path), UserError, SECONDS, PEAK)
    else:
        os.mkfifo(path)
        error = refused_within(lambda: read_structure(path), UserError, SECONDS, PEAK)
    assert "not a regular file" in str(error)


# -- sizes known only when the model runs: a bounded child -------------------------------

def _data_dependent_range(limit_offset: float) -> onnx.ModelProto:
    """Range(0, sum(input) + offset): its length depends on the input's values."""
    nodes = [helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
             helper.make_node("Add", ["total", "offset"], ["limit"]),
             helper.make_node("Range", ["zero", "limit", "one"], ["big"], name="rng")]
    scalars = [numpy_helper.from_array(np.array(value, np.float32), name)
               for name, value in (("zero", 0.0), ("offset", limit_offset), ("one", 1.0))]
    return image_model(nodes, scalars, ("big",))


def test_data_dependent_size_is_warmed_up_in_a_bounded_child(tmp_path: Path) -> None:
    small = save(_data_dependent_range(100.0), tmp_path / "small.onnx")
    model = load(small)
    assert model.outputs[1].name == "big"
    huge = save(_data_dependent_range(2.0**40), tmp_path / "huge.onnx")
    error = refused_within(lambda: load(huge, max_memory_bytes=GiB), UserError, 60, PEAK)
    message = str(error)
    assert "node 'rng' (Range) output 'big'" in message and "known only when" in message
    assert "warm-up in a child process limited to" in message, message


# -- metadata is data, validated once ----------------------------------------------------

def _contract_metadata(**changes: str) -> dict[str, str]:
    metadata = {"preprocess.resize": "crop", "preprocess.crop_fraction": "0.875",
                "preprocess.mean": "[0.5, 0.5, 0.5]", "preprocess.std": "[0.25, 0.25, 0.25]",
                "preprocess.scale": "0-1", "preprocess.height": "8", "preprocess.width": "8",
                "preprocess.colour": "rgb"}
    return {**metadata, **changes}


METADATA = {
    "crop_fraction_5e-324": (_contract_metadata(**{"preprocess.crop_fraction": "5e-324"}),
                             "crop fraction must be in [0.01, 1]"),
    "mean_5000_digit_integer": (_contract_metadata(**{"preprocess.mean": "[" + "9" * 5000 +
                                                      ", 0, 0]"}),
                                "preprocess.mean: not JSON (integer of 5000 digits)"),
    "std_infinity": (_contract_metadata(**{"preprocess.std": "[Infinity, 1, 1]"}),
                     "preprocess.std: Infinity is not a number"),
    "mean_nan": (_contract_metadata(**{"preprocess.mean": "[NaN, 0, 0]"}),
                 "preprocess.mean: NaN is not a number"),
    "std_1e-300": (_contract_metadata(**{"preprocess.std": "[1e-300, 1, 1]"}),
                   "std values must be in [1e-06, 1e+06]"),
    "mean_1e308_float": (_contract_metadata(**{"preprocess.mean": "[1e308, 0, 0]"}),
                         "mean values must be finite"),
    "class_names_100000_deep": ({"class_names": "[" * 100_000 + "]" * 100_000},
                                "class_names: nested more than 2 deep"),
    "class_names_not_strings": ({"class_names": json.dumps(list(range(10)))},
                                "class_names must be a JSON list of strings"),
    "class_names_shorter_than_outputs": ({"class_names": json.dumps(["a", "b"])},
                                         "2 labels for a model with 10 classes"),
    "class_names_longer_than_outputs": ({"class_names": json.dumps(["a"] * 11)},
                                        "11 labels for a model with 10 classes"),
    "mean_is_a_string": (_contract_metadata(**{"preprocess.mean": '"abc"'}),
                         "expected a JSON list of numbers"),
}


@pytest.mark.parametrize("case", sorted(METADATA))
def test_out_of_range_metadata_is_refused_when_the_model_is_opened(tmp_path: Path,
                                                                   case: str) -> None:
    metadata, fragment = METADATA[case]
    path = save(image_model([], [], metadata=metadata), tmp_path / f"{case}.onnx")
    refused(path, fragment)
    run = run_cli_bounded("inspect", path)
    assert run.code == 2 and fragment in run.err and "Traceback" not in run.err, run
    assert run.seconds < 30 and run.peak_bytes < 400 * MiB, run


def test_model_without_inputs_is_a_located_error(tmp_path: Path) -> None:
    node = helper.make_node("Constant", [], ["out"], value=floats("v", [1.0]))
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info(
        "out", TensorProto.FLOAT, [1])])
    path = save(helper.make_model(graph), tmp_path / "no_inputs.onnx")
    refused(path, "the model has no inputs")
    assert run_cli_bounded("inspect", path).code == 2


def test_model_without_outputs_is_a_located_error(tmp_path: Path) -> None:
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [])
    path = save(helper.make_model(graph), tmp_path / "no_outputs.onnx")
    refused(path, "the model has no outputs")


def test_version_folder_named_superscript_two_is_not_a_version(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "m"
    (model_dir / "²").mkdir(parents=True)
    write_tiny_onnx(model_dir / "²" / "model.onnx")
    (model_dir / "config.pbtxt").write_text('name: "m"\nplatform: "onnxruntime_onnx"\n')
    error = refused_within(lambda: find_models(tmp_path / "repo"), UserError, SECONDS, PEAK)
    assert "no version directory with model.onnx" in str(error)
    run = run_cli_bounded("inspect", tmp_path / "repo")
    assert run.code == 2 and "no version directory" in run.err, run


def test_max_batch_size_of_5000_digits_is_not_a_crash(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "m"
    (model_dir / "1").mkdir(parents=True)
    write_tiny_onnx(model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(f'name: "m"\nmax_batch_size: {"9" * 5000}\n')
    (source,) = find_models(tmp_path / "repo")
    assert source.config_max_batch is None


# -- output that cannot be forged ---------------------------------------------------------

def test_node_name_with_escapes_and_newlines_is_escaped_in_the_error(tmp_path: Path) -> None:
    name = "\x1b[2J\nerror: all is well\r"
    model = image_model([helper.make_node("ConstantOfShape", ["shape"], ["big"], name=name)],
                        [ints("shape", [HUGE])], ("big",))
    path = save(model, tmp_path / "forged.onnx")
    message = refused(path)
    assert "\\x1b[2J\\nerror: all is well\\r" in message and "\n" not in message
    run = run_cli_bounded("serve", path, "--port", "0")
    assert run.code == 2 and run.err.count("\n") == 1 and "\x1b" not in run.err, run


def test_model_folder_names_with_newlines_are_escaped_in_the_error(tmp_path: Path) -> None:
    """Two models named alike, one in a folder whose name would forge an `error:` line."""
    for folder in ("a\nerror: all is well", "b"):
        (tmp_path / "repo" / folder / "1").mkdir(parents=True)
        write_tiny_onnx(tmp_path / "repo" / folder / "1" / "model.onnx")
        (tmp_path / "repo" / folder / "config.pbtxt").write_text('name: "m"\n')
    error = refused_within(lambda: find_models(tmp_path / "repo"), UserError, SECONDS, PEAK)
    assert "two models are named 'm'" in str(error) and "\n" not in str(error), str(error)
    assert "a\\nerror: all is well" in str(error)


def test_log_arguments_from_files_are_escaped() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "loaded model %s from %s",
                               ("evil\n\x1b[31mINFO: fake", Path("/m/\x07.onnx")), None)
    assert EscapeLogArguments().filter(record)
    assert record.getMessage() == "loaded model evil\\n\\x1b[31mINFO: fake from /m/\\x07.onnx"


def test_data_propagation_that_would_expand_runs_in_a_bounded_child(tmp_path: Path) -> None:
    """onnx's data propagation materialises the values it propagates: a 1 GiB vector of
    ConstantOfShape feeding the shape of an Expand is propagated in a 2 GiB child, which
    fails there, and the model is refused; this process never holds it."""
    value = helper.make_tensor("v", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("ConstantOfShape", ["n"], ["c"], value=value),
             helper.make_node("Shape", ["pool"], ["s"]),
             helper.make_node("Concat", ["s", "c"], ["target"], axis=0),
             helper.make_node("Expand", ["pool", "target"], ["big"], name="exp")]
    model = image_model(nodes, [ints("n", [2**27])], ("big",))
    path = save(model, tmp_path / "propagation.onnx")
    # the time is mostly the child's start (an interpreter importing onnx), slow on a busy
    # 2-core machine; its memory is bounded by the child's own limit, not counted here
    message = refused(path, "node 'exp' (Expand) output 'big'", "propagating them in a child",
                      seconds=30.0, max_memory_bytes=8 * GiB)
    assert "a shape computed from constants is too large" in message


# -- weights stored outside the model file ----------------------------------------------

def _external_model(folder: Path, location: str | None) -> tuple[Path, bytes]:
    """The tiny image model with its classifier weight (120 bytes) stored in the external
    file `location` (None: marked external but naming no file)."""
    model = image_model([], [])
    weight = model.graph.initializer[0]
    data = weight.raw_data or np.ones((10, 3), np.float32).tobytes()
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    if location is not None:
        weight.external_data.add(key="location", value=location)
        weight.external_data.add(key="length", value=str(len(data)))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, data


@pytest.mark.parametrize("case", ["parent", "absolute", "symlink_out", "fifo", "missing",
                                  "no_location"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, case: str) -> None:
    """onnxruntime would read what an initializer's external-data location names; the opener
    checks it first: under the model's folder, a regular file, of bounded size."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 120)
    folder = tmp_path / "model"
    location = {"parent": "../secret.bin", "absolute": str(secret), "symlink_out": "w.bin",
                "fifo": "w.bin", "missing": "w.bin", "no_location": None}[case]
    path, _ = _external_model(folder, location)
    if case == "symlink_out":
        (folder / "w.bin").symlink_to(secret)
    elif case == "fifo":
        os.mkfifo(folder / "w.bin")
    fragment = {"parent": "outside", "absolute": "outside", "symlink_out": "outside",
                "fifo": "not a regular file", "missing": "not found",
                "no_location": "names no file"}[case]
    message = str(refused_within(lambda: read_structure(path), UserError, SECONDS, PEAK))
    assert "initializer 'fc.w'" in message and fragment in message, message
    refused(path, "initializer 'fc.w'", fragment)  # serve's load says the same


def test_external_data_beside_the_model_is_served(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    path, data = _external_model(folder, "weights.bin")
    (folder / "weights.bin").write_bytes(data)
    structure = read_structure(path)
    assert structure.initializers[0].external == "weights.bin"
    model = load(path)
    logits = model.session.run(None, {"input": np.ones((1, 3, 8, 8), np.float32)})[0]
    assert logits.shape == (1, 10) and np.allclose(logits, 3.0)
