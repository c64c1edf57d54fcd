"""Hostile weights and data files: small files that claim or expand to gigabytes.

safetensors aliasing and overlap, tensors with unexpected names read before their names are
checked, Caffe's unpacked floats and 2**32 x 2**32 blobs, Torch7 shared references, modules
that contain themselves and tensors that reach outside their storage, CIFAR pickles whose
arrays are larger than the file. Each is refused as a located user error within a time and
memory bound (`hostile_inputs.refused_within`, or a capped child for the CLI). Files are made
here, small or sparse.
"""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hostile_inputs import GiB, MiB, refused_within, run_cli_bounded, sparse
from torch7_writer import Module, _Writer, sequential

from resnext_compiler import caffe_proto
from resnext_compiler.errors import UserError
from resnext_compiler.importers import import_weights
from resnext_compiler.protobuf_wire import frame, tag, varint
from resnext_compiler.spec import load_spec

SECONDS = 5.0
PEAK = 100 * MiB
SPEC = """\
name: tiny
input: {channels: 3, height: 16, width: 16}
stem: cifar
block: {cardinality: 2, base_width: 16, form: C}
stages: [{depth: 1, width: 16}]
head: {num_classes: 10}
"""


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


def imported(source: Path, spec_path: Path, allow_partial: bool = False):
    return import_weights(source, load_spec(spec_path), allow_partial)


def refused_import(source: Path, spec_path: Path, *fragments: str, **kwargs) -> str:
    error = refused_within(lambda: imported(source, spec_path, **kwargs), UserError, SECONDS,
                           PEAK)
    message = str(error)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- safetensors ---------------------------------------------------------------------------

def safetensors_file(path: Path, entries: dict[str, tuple[list[int], int, int]],
                     data_bytes: int) -> Path:
    """A safetensors header with F32 `entries` {name: (shape, begin, end)} and `data_bytes`
    of sparse data after it."""
    header = json.dumps({name: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}
                         for name, (shape, begin, end) in entries.items()}).encode()
    head = struct.pack("<Q", len(header)) + header
    return sparse(path, len(head) + data_bytes, head)


def test_200_names_on_one_64_mib_range_are_refused(tmp_path: Path, spec_path: Path) -> None:
    """12.5 GiB when each name is read; the format gives every tensor its own bytes."""
    entries = {f"t{i}": ([16 * MiB], 0, 64 * MiB) for i in range(200)}
    path = safetensors_file(tmp_path / "aliased.safetensors", entries, 64 * MiB)
    refused_import(path, spec_path, "overlap in the file")
    run = run_cli_bounded("compile", spec_path, "--weights", path, "-o", tmp_path / "out")
    assert run.code == 2 and "overlap in the file" in run.err, run
    assert run.peak_bytes < 400 * MiB, run


def test_tensors_overlapping_by_one_float_are_refused(tmp_path: Path, spec_path: Path) -> None:
    entries = {"a": ([4], 0, 16), "b": ([4], 12, 28)}
    path = safetensors_file(tmp_path / "overlap.safetensors", entries, 28)
    refused_import(path, spec_path, "tensors 'a' and 'b' overlap")


def test_6_gib_tensor_with_an_unexpected_name_is_refused_unread(tmp_path: Path,
                                                                spec_path: Path) -> None:
    entries = {"not.a.parameter": ([3 * 512 * MiB], 0, 6 * GiB)}
    path = safetensors_file(tmp_path / "huge.safetensors", entries, 6 * GiB)
    refused_import(path, spec_path, "22 missing, 1 unexpected", "nothing was written")
    run = run_cli_bounded("import-weights", path, "--spec", spec_path, "-o",
                          tmp_path / "out.safetensors")
    assert run.code == 2 and "1 unexpected" in run.err, run
    assert run.seconds < 30 and run.peak_bytes < 400 * MiB, run


def test_allow_partial_never_reads_the_unexpected_tensor(tmp_path: Path,
                                                         spec_path: Path) -> None:
    bias = "fc.bias"
    entries = {bias: ([10], 0, 40), "junk": ([3 * 512 * MiB], 40, 40 + 6 * GiB)}
    path = safetensors_file(tmp_path / "partial.safetensors", entries, 40 + 6 * GiB)
    result = refused_within(lambda: (_ for _ in ()).throw(UserError(
        repr(imported(path, spec_path, allow_partial=True).unexpected))), UserError, SECONDS,
        PEAK)
    assert "junk: not a parameter of tiny" in str(result)


@pytest.mark.parametrize("side,message", [
    (2**16, "declare more than"),  # 16 GiB: a weights file may be that large, the form not
    (2**20, "larger than the 68719476736-byte limit"),  # 4 TiB: the opener's size bound first
])
def test_weights_in_another_form_declaring_too_much_are_refused(
        side: int, message: str, tmp_path: Path, spec_path: Path) -> None:
    """Form conversion reads every tensor: their declared size is bounded first."""
    entries = {"layer1.0.paths.0.conv1.weight": ([side, side, 1, 1], 0, 4 * side * side)}
    path = safetensors_file(tmp_path / "form_a.safetensors", entries, 4 * side * side)
    refused_import(path, spec_path, message)


# -- Caffe ---------------------------------------------------------------------------------

def caffemodel(path: Path, blob: bytes, layer_type: str = "Convolution") -> Path:
    layer = (frame(1, 5) + b"conv1" + frame(2, len(layer_type)) + layer_type.encode()
             + frame(7, len(blob)) + blob)
    path.write_bytes(frame(1, 4) + b"tiny" + frame(100, len(layer)) + layer)
    return path


def shape_field(dims: list[int]) -> bytes:
    packed = b"".join(varint(d) for d in dims)
    inner = frame(1, len(packed)) + packed
    return frame(7, len(inner)) + inner


def test_caffe_unpacked_floats_are_bounded(tmp_path: Path, spec_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """400 MB of floats one field each took 2.7 GB; past the bound the read stops."""
    monkeypatch.setattr(caffe_proto, "MAX_UNPACKED_FLOATS", 1000)
    floats = (tag(5, 5) + struct.pack("<f", 1.0)) * 1001
    path = caffemodel(tmp_path / "unpacked.caffemodel", shape_field([1001]) + floats)
    refused_import(path, spec_path, "more than 1,000 floats stored unpacked")


def test_caffe_unpacked_floats_under_the_bound_still_read(tmp_path: Path) -> None:
    floats = (tag(5, 5) + struct.pack("<f", 2.5)) * 6
    path = caffemodel(tmp_path / "few.caffemodel", shape_field([2, 3]) + floats)
    _, (layer,) = caffe_proto.read_net(path)
    np.testing.assert_array_equal(layer.blobs[0], np.full((2, 3), 2.5, np.float32))


@pytest.mark.parametrize("dims", [[2**32, 2**32], [2**63, 2], [2**64 - 1]],
                         ids=["2^32x2^32", "2^63x2", "2^64-1"])
def test_caffe_blob_shape_that_wraps_int64_is_refused(tmp_path: Path, spec_path: Path,
                                                      dims: list[int]) -> None:
    data = frame(5, 0)
    path = caffemodel(tmp_path / "shape.caffemodel", shape_field(dims) + data)
    refused_import(path, spec_path, "does not hold its 0 values", str(path))


# -- Torch7 --------------------------------------------------------------------------------

@dataclass
class RawTensor:
    """A FloatTensor written with any sizes and strides over a storage of `storage` floats."""

    sizes: list[int]
    strides: list[int]
    storage: int
    declared_storage: int | None = None


class _RawWriter(_Writer):
    def obj(self, value) -> None:  # noqa: ANN001
        if not isinstance(value, RawTensor):
            return super().obj(value)
        self._torch("torch.FloatTensor")
        self.int(len(value.sizes))
        for size in value.sizes:
            self.long(size)
        for stride in value.strides:
            self.long(stride)
        self.long(1)
        self._torch("torch.FloatStorage")
        self.long(value.declared_storage if value.declared_storage is not None
                  else value.storage)
        self.out += b"\0" * 4 * value.storage
        return None


def write_t7(path: Path, obj: object) -> Path:
    writer = _RawWriter()
    writer.obj(obj)
    path.write_bytes(bytes(writer.out))
    return path


def conv_with(weight: object) -> Module:
    return Module("nn.SpatialConvolution", {"weight": weight, "nInputPlane": 3,
                                            "nOutputPlane": 16, "kW": 3, "kH": 3})


def test_t7_shared_references_40_deep_are_bounded(tmp_path: Path, spec_path: Path) -> None:
    """Each level lists the one below twice: 2**40 visits from a few KB (3.8 GB before)."""
    level = Module("nn.ReLU")
    for _ in range(40):
        level = sequential(level, level)
    path = write_t7(tmp_path / "shared.t7", level)
    assert path.stat().st_size < 16_000
    refused_import(path, spec_path, "more than 60,000 modules")


def test_t7_module_containing_itself_is_refused(tmp_path: Path, spec_path: Path) -> None:
    loop = sequential()
    loop.fields["modules"] = [Module("nn.ReLU"), loop]
    path = write_t7(tmp_path / "loop.t7", loop)
    refused_import(path, spec_path, "the Torch7 module at [2] contains itself")


def test_t7_containers_nested_too_deep_are_refused(tmp_path: Path, spec_path: Path) -> None:
    level = Module("nn.ReLU")
    for _ in range(100):
        level = sequential(level)
    refused_import(write_t7(tmp_path / "deep.t7", level), spec_path, "nest more than 64 deep")


@pytest.mark.parametrize("tensor,why", [
    (RawTensor([2**32, 2**32], [0, 0], 1), "reaches outside (or repeats) its storage"),
    (RawTensor([16, 3, 3, 3], [1, 1, 1, 1], 30), "reaches outside (or repeats)"),
    (RawTensor([16, 3, 3, 3], [27, 9, 3, 10**12], 432), "reaches outside"),
    (RawTensor([4], [-1], 4), "a tensor with sizes [4], strides [-1]"),
    (RawTensor([4], [1], 4, declared_storage=2**40), "a storage of 1099511627776 elements"),
    (RawTensor([1] * 9, [1] * 9, 1), "a tensor with 9 dimensions"),
], ids=["stride-0 2^64 elements", "overlapping strides", "stride past the storage",
        "negative stride", "storage longer than the file", "too many dimensions"])
def test_t7_tensor_views_are_checked_against_their_storage(tmp_path: Path, spec_path: Path,
                                                           tensor: RawTensor, why: str) -> None:
    path = write_t7(tmp_path / "view.t7", sequential(conv_with(tensor)))
    refused_import(path, spec_path, "cannot read as a Torch7 file", why)


# -- CIFAR pickles -------------------------------------------------------------------------

def reconstruct_pickle(shape: tuple[int, ...], dtype: str = "b") -> bytes:
    """A dict whose b'data' is numpy's `_reconstruct(ndarray, shape, dtype)` with no data
    (no BUILD): numpy allocates the whole shape from a few hundred bytes."""
    ints = b"".join(b"J" + struct.pack("<i", d) if d < 2**31 else
                    b"\x8a\x08" + struct.pack("<q", d) for d in shape)
    return (b"\x80\x02}(C\x04data" + b"cnumpy._core.multiarray\n_reconstruct\n"
            b"cnumpy\nndarray\n(" + ints + b"tC\x01" + dtype.encode() + b"\x87R"
            b"C\x06labels]u.")


@pytest.mark.parametrize("payload,why", [
    (reconstruct_pickle((2**20, 3072)), "larger than the"),
    (reconstruct_pickle((2**40,)), "larger than the"),
    (b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", "expected a dict"),
], ids=["301 bytes -> 3 GiB", "2^40 elements", "lists 100000 deep"])
def test_cifar_batch_that_expands_is_refused(tmp_path: Path, payload: bytes, why: str) -> None:
    from resnext_compiler.runtimes.train.cifar import read_cifar

    assert len(payload) < 400_000
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"]:
        (tmp_path / name).write_bytes(payload)
    error = refused_within(lambda: read_cifar(tmp_path, "cifar10"), UserError, SECONDS, PEAK)
    assert "data_batch_1" in str(error) and why in str(error), error


def test_cifar_batch_of_the_right_size_still_reads(tmp_path: Path) -> None:
    from resnext_compiler.runtimes.train.cifar import read_cifar

    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    splits, _ = read_cifar(tmp_path, "cifar10")
    assert tuple(splits["train"][0].shape) == (10, 3, 32, 32)


# -- run folders ---------------------------------------------------------------------------

def test_plot_of_a_run_whose_spec_nests_5000_deep_is_located(tmp_path: Path, run_cli) -> None:
    from resnext_compiler.runtimes.train.plot import run_labels

    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_top1_error": 50.0, '
                                       '"val_top1_error": 60.0}\n')
    error = refused_within(lambda: run_labels([run]), UserError, SECONDS, PEAK)
    assert f"{run / 'spec.yaml'}:1:" in str(error) and "nested more than 64" in str(error)
    result = run_cli("plot", run)
    assert result.code == 2 and "nested more than 64" in result.err, result


# -- names that would forge a line ---------------------------------------------------------

FORGED = "\nerror: forged"


def assert_no_forged_line(err: str) -> None:
    """The CLI prints one `error:` line; a name from the file shows escaped inside it."""
    assert not [line for line in err.splitlines() if "forged" in line
                and not line.startswith("error: ")], err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1, err
    assert "\\nerror: forged" in err, err


def full_weights(path: Path, spec_path: Path, extra: dict[str, list[int]]) -> Path:
    """Every parameter of the spec (zeros), plus `extra` tensors."""
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.weights import graph_shapes

    shapes = {**graph_shapes(compile_spec(load_spec(spec_path))), **extra}
    entries, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        entries[name] = (list(shape), offset, offset + size)
        offset += size
    return safetensors_file(path, entries, offset)


@pytest.mark.parametrize("command", ["compile", "import-weights"])
def test_a_tensor_name_with_a_newline_stays_on_its_line(tmp_path: Path, spec_path: Path,
                                                        run_cli, command: str) -> None:
    path = full_weights(tmp_path / "w.safetensors", spec_path, {f"junk{FORGED}": [2]})
    args = (["compile", spec_path, "--weights", path, "-o", tmp_path / "out.onnx"]
            if command == "compile" else
            ["import-weights", path, "--spec", spec_path, "-o", tmp_path / "out.safetensors"])
    result = run_cli(*args)
    assert result.code == 2 and "1 unexpected" in result.err, result
    forged = [line for line in result.err.splitlines() if "forged" in line]
    assert forged == ["  junk\\nerror: forged: not a parameter of tiny (shape [2])"], result.err


@pytest.mark.parametrize("header", [b"\x00" * 16, struct.pack("<Q", 4) + b"[1] ",
                                    struct.pack("<Q", 2) + b"{]"],
                         ids=["bad length", "not an object", "not JSON"])
def test_a_weights_file_name_with_a_newline_stays_on_its_line(tmp_path: Path, spec_path: Path,
                                                              run_cli, header: bytes) -> None:
    path = tmp_path / f"w{FORGED}.safetensors"
    path.write_bytes(header + b"\x00" * 16)
    result = run_cli("compile", spec_path, "--weights", path, "-o", tmp_path / "out.onnx")
    assert result.code == 2 and "safetensors" in result.err, result
    assert_no_forged_line(result.err)
    assert len(result.err.strip().splitlines()) == 1, result.err


def test_a_mismatch_in_a_file_named_with_a_newline_stays_on_its_lines(
        tmp_path: Path, spec_path: Path, run_cli) -> None:
    path = safetensors_file(tmp_path / f"w{FORGED}.safetensors", {"fc.bias": ([10], 0, 40)}, 40)
    result = run_cli("compile", spec_path, "--weights", path, "-o", tmp_path / "out.onnx")
    assert result.code == 2 and "missing" in result.err, result
    assert_no_forged_line(result.err)
