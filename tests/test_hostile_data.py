"""Hostile data files: image bombs, corrupt weights, CIFAR batches and run directories are each
refused as a user error (exit 2) naming the file, quickly and without decoding the bomb."""

from __future__ import annotations

import io
import json
import pickle
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_inputs import TINY, png_header

from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import InputContract
from resnext_compiler.limits import MAX_IMAGE_PIXELS
from resnext_compiler.runtimes.train.folder import FolderImages
from resnext_compiler.runtimes.train.loader import batches

SECONDS = 2.0
PEAK_BYTES = 200 * 1024 * 1024


# ImageNet's resize rule (shorter side to 32 / 0.875, centre crop) at 32x32
CONTRACT = InputContract(3, 32, 32, "crop", 0.875, (0.5,) * 3, (0.25,) * 3)


def folder_images(paths: list[Path], augment: str = "none") -> FolderImages:
    return FolderImages("imagefolder", [(str(p), 0) for p in paths], ["a"], CONTRACT,
                        augment=augment)


def good_png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 36), (10, 200, 30)).save(path)
    return path


@pytest.mark.parametrize("size,what", [((30000, 30000), "image is more than"),
                                       ((12000, 12000), "image is 12000x12000"),
                                       ((200000, 1), "its resize target is 7314286x37")])
@pytest.mark.parametrize("workers", [0, 1])
def test_image_bomb_in_training_data_names_the_file(tmp_path: Path, size: tuple[int, int],
                                                     what: str, workers: int) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(*size))
    images = folder_images([good_png(tmp_path / "ok.png"), bomb])
    started = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as refused:
            list(batches(images, [torch.tensor([0]), torch.tensor([1])], 0, workers))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(refused.value)
    assert message.startswith(f"{bomb}: ") and what in message, message
    assert f"more than {MAX_IMAGE_PIXELS} pixels" in message
    assert time.perf_counter() - started < SECONDS + (3 if workers else 0)  # worker start-up
    assert peak < PEAK_BYTES


def test_random_resized_crop_bounds_only_the_source(tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    from PIL import Image

    Image.new("RGB", (200000, 1)).save(strip)  # resized for the centre crop: 7314286x37
    with pytest.raises(UserError, match="resize target is 7314286x37"):
        folder_images([strip]).load(torch.tensor([0]), 0)
    x, _ = folder_images([strip], augment="rrc-flip").load(torch.tensor([0]), 0)
    assert x.shape == (1, 3, 32, 32)


def _safetensors(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


WEIGHTS_CASES = [
    ("header nested 50k deep", "x.safetensors",
     _safetensors(b'{"a":' * 50000 + b"1" + b"}" * 50000), "nested too deeply"),
    ("pickle bytes", "x.safetensors",
     pickle.dumps({"w": [1, 2, 3]}, protocol=2), "cannot read as a PyTorch checkpoint"),
    ("pickle that runs code", "x.safetensors",
     b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.",
     "cannot read as a PyTorch checkpoint"),
    ("string shape", "x.safetensors",
     _safetensors(json.dumps({"w": {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 4]}})
                  .encode(), b"\0" * 4), "malformed entry"),
    ("float offsets", "x.safetensors",
     _safetensors(json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}})
                  .encode(), b"\0" * 4), "malformed entry"),
    ("header length past the file", "x.safetensors", struct.pack("<Q", 2**62) + b"{}",
     "bad header length"),
]


@pytest.mark.parametrize("case,name,content,message", WEIGHTS_CASES,
                         ids=[c[0] for c in WEIGHTS_CASES])
def test_corrupt_weights_file_is_a_user_error(tmp_path: Path, case: str, name: str,
                                              content: bytes, message: str) -> None:
    from resnext_compiler.weights import read_weights

    path = tmp_path / name
    path.write_bytes(content)
    started = time.perf_counter()
    with pytest.raises(UserError, match=message) as refused:
        read_weights(path)
    assert str(path) in str(refused.value)
    assert time.perf_counter() - started < SECONDS


def _cifar_batch(path: Path, labels: object) -> None:
    data = np.zeros((2, 3072), np.uint8)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))


@pytest.mark.parametrize("labels", [[], ["a", "b"], [0, 10], [-1, 0], [[0], [1]], [0.5, 1.5]],
                         ids=["empty", "strings", "too large", "negative", "nested", "floats"])
def test_cifar_batch_with_bad_labels_is_a_user_error(tmp_path: Path, labels: object) -> None:
    from resnext_compiler.runtimes.train.cifar import read_cifar

    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"]:
        _cifar_batch(tmp_path / name, labels)
    with pytest.raises(UserError, match=r"data_batch_1: expected") as refused:
        read_cifar(tmp_path, "cifar10")
    assert str(tmp_path) in str(refused.value)


def test_cifar_batch_with_odd_keys_is_named_briefly(tmp_path: Path) -> None:
    """Keys the file chose (mixed types, long, a newline, thousands) show as a few short
    reprs on the error's one line."""
    from resnext_compiler.runtimes.train.cifar import read_cifar

    keys = {1: 0, b"x" * 1000: 0, "k\nerror: all is well": 0, **{f"k{i}": 0 for i in range(5000)}}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps(keys, protocol=2))
    with pytest.raises(UserError, match=r"data_batch_1: expected a dict") as refused:
        read_cifar(tmp_path, "cifar10")
    message = str(refused.value)
    assert "\n" not in message and len(message) < 1000, message
    assert "'k\\nerror: all is well'" in message


def test_image_scan_names_a_damaged_file_on_one_line(tmp_path: Path) -> None:
    from resnext_compiler.runtimes.train.image_check import check_image_files

    path = tmp_path / "cat\nerror: all is well.png"
    path.write_bytes(b"not a png")
    with pytest.raises(UserError, match="1 of 1 image file") as refused:
        check_image_files([str(path)])
    lines = str(refused.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[1].startswith(f"  {tmp_path}/cat\\nerror: all is well.png: "), lines


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    """A run directory as `train` leaves it (settings, spec, checkpoint, metrics)."""
    from resnext_compiler.runtimes.train.config import TrainConfig

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.yaml").write_text(f"name: r\nstages: [1]\n{TINY}")
    config = TrainConfig(run_dir=str(run), dataset="digits", data_dir=None, epochs=3,
                         batch_size=8, lr=0.1, reference_batch=8, reference_lr=0.1,
                         lr_from_flag=False, schedule="cosine", milestones=(),
                         warmup_epochs=0, weight_decay=0.0, momentum=0.9, nesterov=True,
                         label_smoothing=0.0, augment="none")
    (run / "train.json").write_text(config.to_json())
    (run / "checkpoints" / "last.pt").write_bytes(b"not read before the settings")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return run


def test_resume_of_the_fixture_run_reads_its_settings(finished_run: Path) -> None:
    from resnext_compiler.runtimes.train.runner import resume_config

    assert resume_config(finished_run).epochs == 3


@pytest.mark.parametrize("file,content,message", [
    ("train.json", "{not json", "train.json: corrupt run settings"),
    ("train.json", "[1, 2]", "train.json: corrupt run settings"),
    ("train.json", '{"epochs": "many"}', "train.json: corrupt run settings"),
    ("train.json", "[" * 100000, "train.json: corrupt run settings"),
    ("metrics.jsonl", '{"epoch": 1}\n{"epo', "metrics.jsonl:2: not a JSON object"),
    ("metrics.jsonl", "[]\n", "metrics.jsonl:1: not a JSON object"),
    ("metrics.jsonl", "\x00\xff\n", "metrics.jsonl:1: not a JSON object"),
])
def test_resume_with_a_corrupt_run_file_is_a_user_error(finished_run: Path, file: str,
                                                        content: str, message: str) -> None:
    from resnext_compiler.runtimes.train.runner import resume_config

    if file == "train.json" and content.startswith("{\"epochs\""):
        settings = json.loads((finished_run / file).read_text())
        settings["epochs"] = "many"
        content = json.dumps(settings)
    (finished_run / file).write_text(content)
    with pytest.raises(UserError, match=message):
        resume_config(finished_run)


def test_resume_with_a_corrupt_run_file_exits_2_from_the_cli(finished_run: Path,
                                                             run_cli) -> None:
    (finished_run / "train.json").write_text("{not json")
    result = run_cli("train", "--resume", finished_run)
    assert result.code == 2, result
    assert "train.json: corrupt run settings" in result.err
    assert "internal error" not in result.err


def test_pickled_safetensors_exits_2_from_compile(tmp_path: Path, run_cli) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nstages: [{{depth: 1, width: 8}}]\n{TINY}")
    weights = tmp_path / "w.safetensors"
    buffer = io.BytesIO()
    pickle.dump({"conv1.weight": [1.0]}, buffer, protocol=2)
    weights.write_bytes(buffer.getvalue())
    result = run_cli("compile", spec, "--weights", weights, "-o", tmp_path / "m.onnx")
    assert result.code == 2, result
    assert f"{weights}: cannot read as a PyTorch checkpoint" in result.err
