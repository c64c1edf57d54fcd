"""Data for training: embedded digits, CIFAR batches, image folders, and their error messages."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import write_cifar10, write_folder

from resnext_compiler.errors import SpecError, UserError
from resnext_compiler.runtimes.train.augment import random_crop
from resnext_compiler.runtimes.train.datasets import open_dataset
from resnext_compiler.runtimes.train.sampler import GlobalBatchSampler
from resnext_compiler.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "runtimes" / "train" / "default_spec.yaml"


def small_spec(tmp_path: Path, channels: int = 3, size: int = 32, classes: int = 10) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(
        "spec_version: 1\nname: small\n"
        f"input: {{channels: {channels}, height: {size}, width: {size}}}\n"
        "stem: cifar\nblock: {type: bottleneck, cardinality: 2, base_width: 16}\n"
        "stages: [{depth: 1, width: 8}, {depth: 1, width: 16}]\n"
        f"head:\n  num_classes: {classes}\n")
    return path


# --- embedded digits -----------------------------------------------------------------------


def test_digits_are_real_8x8_images_split_four_to_one():
    data = open_dataset(load_spec(DEFAULT_SPEC), "digits", None)
    assert (len(data.train), len(data.val)) == (1442, 355)
    x, y = data.val.load(torch.arange(355), epoch=0)
    assert x.shape == (355, 1, 8, 8) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.1 and 0.8 < float(x.std()) < 1.2  # normalised
    # 5th, 10th, ... image of each digit: floor(class size / 5) per class
    assert torch.bincount(y, minlength=10).tolist() == [35, 36, 35, 36, 36, 36, 36, 35, 34, 36]


def test_digits_with_an_rgb_spec_point_at_input_channels(tmp_path):
    spec = load_spec(small_spec(tmp_path, channels=3, size=8))
    with pytest.raises(SpecError) as info:
        open_dataset(spec, "digits", None)
    assert str(info.value) == (
        f"{tmp_path / 'small.yaml'}:3:9: input.channels: the spec's input has 3 channel(s) but "
        "digits images have 1; set input.channels: 1")


# --- augmentation and sampling -------------------------------------------------------------


def test_augmentation_does_not_depend_on_how_samples_are_batched():
    data = open_dataset(load_spec(DEFAULT_SPEC), "digits", None, seed=3)
    indices = torch.tensor([5, 17, 300, 42, 9, 1000])
    whole, _ = data.train.load(indices, epoch=2)
    halves = torch.cat([data.train.load(indices[:2], 2)[0], data.train.load(indices[2:], 2)[0]])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, data.train.load(indices, epoch=3)[0])


def test_pad_crop_shifts_each_image_by_at_most_the_padding():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = random_crop(x, pad=1, seed=0, epoch=0, indices=torch.arange(2))
    for i in range(2):
        shifted = [torch.roll(torch.nn.functional.pad(x[i], (1, 1, 1, 1)), (dy, dx), (1, 2))
                   [:, 1:7, 1:7] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(out[i], s) for s in shifted)


def test_two_ranks_read_the_same_micro_batches_as_one_process_accumulating_two():
    one = GlobalBatchSampler(100, 16, world_size=1, rank=0, accum_steps=2, seed=1)
    ranks = [GlobalBatchSampler(100, 16, world_size=2, rank=r, accum_steps=1, seed=1)
             for r in (0, 1)]
    plan = one.micro_batches(epoch=4)
    assert len(plan) == 6  # 100 // 16, the partial batch dropped
    for step, micro in enumerate(plan):
        assert torch.equal(micro[0], ranks[0].micro_batches(4)[step][0])
        assert torch.equal(micro[1], ranks[1].micro_batches(4)[step][0])
    seen = torch.cat([m for step in plan for m in step])
    assert len(set(seen.tolist())) == 96
    assert not torch.equal(one.permutation(4), one.permutation(5))


# --- CIFAR ---------------------------------------------------------------------------------


def test_cifar10_batches_load_with_class_names(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    data = open_dataset(load_spec(small_spec(tmp_path)), "cifar10", str(tmp_path))
    assert (len(data.train), len(data.val)) == (30, 6)
    assert data.train.classes[:3] == ["airplane", "automobile", "bird"]
    x, y = data.train.load(torch.arange(4), epoch=0)
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64


def test_missing_cifar_files_say_what_was_expected(tmp_path):
    spec = load_spec(small_spec(tmp_path))
    with pytest.raises(UserError) as info:
        open_dataset(spec, "cifar10", str(tmp_path))
    assert str(info.value) == (
        f"cifar10 data not found in {tmp_path}: expected the python-version batch files "
        "(data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch) "
        f"there or in {tmp_path / 'cifar-10-batches-py'} (extract cifar-10-python.tar.gz; "
        "nothing is downloaded)")


def test_a_damaged_cifar_batch_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=r"data_batch_3: not a CIFAR python batch file \("):
        open_dataset(load_spec(small_spec(tmp_path)), "cifar10", str(tmp_path))


def test_a_cifar_batch_of_the_wrong_shape_is_named(tmp_path):
    write_cifar10(tmp_path)
    bad = {b"data": np.zeros((6, 100), np.uint8), b"labels": [0] * 6}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(UserError) as info:
        open_dataset(load_spec(small_spec(tmp_path)), "cifar10", str(tmp_path))
    assert str(info.value) == (f"{tmp_path / 'test_batch'}: expected b'data' of shape "
                               "(N, 3072) uint8; got (6, 100) uint8")


def test_a_cifar_file_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path)

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(UserError, match=r"refusing to load builtins\.print"):
        open_dataset(load_spec(small_spec(tmp_path)), "cifar10", str(tmp_path))


def test_num_classes_mismatch_points_at_the_spec_line(tmp_path):
    write_cifar10(tmp_path)
    spec_path = small_spec(tmp_path, classes=100)
    with pytest.raises(SpecError) as info:
        open_dataset(load_spec(spec_path), "cifar10", str(tmp_path))
    assert str(info.value) == (
        f"{spec_path}:8:3: head.num_classes: the spec has 100 classes but the cifar10 data "
        "has 10; set head.num_classes: 10")


# --- image folders -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 96])
def test_image_folders_give_crops_of_the_spec_input_size(tmp_path, size):
    write_folder(tmp_path / "data")
    spec = load_spec(small_spec(tmp_path, size=size, classes=2))
    data = open_dataset(spec, "imagefolder", str(tmp_path / "data"))
    assert data.train.classes == ["cat", "dog"]
    x, y = data.train.load(torch.arange(6), epoch=0)
    assert x.shape == (6, 3, size, size)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    v, _ = data.val.load(torch.arange(2), epoch=0)
    assert v.shape == (2, 3, size, size)


def test_image_folder_without_val_says_what_is_expected(tmp_path):
    write_folder(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "val")
    with pytest.raises(UserError) as info:
        open_dataset(load_spec(small_spec(tmp_path, classes=2)), "imagefolder", str(tmp_path))
    assert str(info.value) == (f"{tmp_path / 'val'}: missing; an image-folder data set needs "
                               "train/ and val/ folders with one sub-folder of images per class")


def test_an_unreadable_image_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"garbage")
    data = open_dataset(load_spec(small_spec(tmp_path, classes=2)), "imagefolder", str(tmp_path))
    with pytest.raises(UserError, match=r"^cannot read image .*train/cat/0\.png: "):
        data.train.load(torch.arange(2), epoch=0)


def test_train_cli_reports_missing_data_dir_with_exit_2(run_cli, tmp_path):
    result = run_cli("train", small_spec(tmp_path), "--dataset", "cifar10", "--data",
                     tmp_path / "nowhere", "--run-dir", tmp_path / "run")
    assert result.code == 2
    assert result.err == f"error: --data {tmp_path / 'nowhere'}: no such directory\n"
    assert not (tmp_path / "run").exists()


def test_train_cli_reports_class_mismatch_with_location(run_cli, tmp_path):
    write_cifar10(tmp_path / "c")
    spec_path = small_spec(tmp_path, classes=100)
    result = run_cli("train", spec_path, "--dataset", "cifar10", "--data", tmp_path / "c",
                     "--run-dir", tmp_path / "run")
    assert result.code == 2
    assert result.err.startswith(f"{spec_path}:8:3: head.num_classes: the spec has 100 classes")


def test_parse_spec_digits_shorthand_is_accepted():
    spec = parse_spec("name: t\ninput: {channels: 1, height: 8, width: 8}\nstem: cifar\n"
                      "stages: [1]\nhead: {num_classes: 10}\n")
    assert len(open_dataset(spec, "digits", None).train) == 1442
