"""Training settings: the seed's linear lr scaling, schedules, and bad flag combinations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from resnext_compiler.errors import UserError
from resnext_compiler.runtimes.train.config import (
    TrainConfig,
    TrainOverrides,
    default_milestones,
    resolve_config,
    scaled_lr,
)
from resnext_compiler.runtimes.train.schedule import LRSchedule
from resnext_compiler.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parent.parent
CIFAR_SPEC = REPO / "specs" / "resnext29_8x64d.yaml"


@pytest.mark.parametrize(("batch", "lr"), [(128, 0.1), (64, 0.05), (32, 0.025), (256, 0.2)])
def test_lr_scales_linearly_with_the_global_batch_like_the_seed_cifar_table(batch, lr):
    assert scaled_lr(0.1, 128, batch) == pytest.approx(lr)


def test_cli_batch_size_rescales_the_specs_lr_and_says_so(tmp_path):
    config = resolve_config(load_spec(CIFAR_SPEC),
                            TrainOverrides(batch_size=32, data_dir=str(tmp_path)), tmp_path)
    assert config.lr == pytest.approx(0.025)
    assert config.describe_lr() == ("lr 0.025 = 0.1 x 32/128 (linear scaling from the spec's "
                                    "batch 128 -> lr 0.1)")


def test_explicit_lr_is_used_as_given(tmp_path):
    config = resolve_config(load_spec(CIFAR_SPEC),
                            TrainOverrides(batch_size=32, lr=0.3, data_dir="x"), tmp_path)
    assert config.lr == 0.3
    assert config.describe_lr() == "lr 0.3 (from --lr)"


def test_default_milestones_imagenet_every_30_epochs_cifar_at_half_and_three_quarters():
    assert default_milestones("imagenet", 100) == (30, 60, 90)
    assert default_milestones("cifar10", 300) == (150, 225)
    assert default_milestones("digits", 15) == (8, 12)


def test_step_schedule_divides_by_ten_at_each_milestone():
    schedule = LRSchedule(0.1, "step", epochs=90, steps_per_epoch=10, milestones=(30, 60))
    assert schedule.lr(0, 0) == pytest.approx(0.1)
    assert schedule.lr(29, 9) == pytest.approx(0.1)
    assert schedule.lr(30, 0) == pytest.approx(0.01)
    assert schedule.lr(60, 5) == pytest.approx(0.001)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    schedule = LRSchedule(0.4, "cosine", epochs=10, steps_per_epoch=4, warmup_epochs=2)
    assert [schedule.lr(0, s) for s in range(4)] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert schedule.lr(1, 3) == pytest.approx(0.4)
    assert schedule.lr(2, 0) == pytest.approx(0.4)
    assert schedule.lr(6, 0) == pytest.approx(0.2)  # half-way through the cosine part
    assert schedule.lr(9, 3) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 31 / 32)))


def test_global_batch_must_split_over_processes_and_accumulation(tmp_path):
    spec = load_spec(CIFAR_SPEC)
    with pytest.raises(UserError) as info:
        resolve_config(spec, TrainOverrides(batch_size=100, nproc=2, accum_steps=3,
                                            data_dir="x"), tmp_path)
    assert str(info.value) == (
        "the global batch 100 does not split evenly over 2 process(es) x 3 accumulation "
        "step(s); choose --batch-size as a multiple of 6")


def test_fp16_autocast_on_cpu_is_refused(tmp_path):
    with pytest.raises(UserError, match="fp16 autocast needs a GPU; on CPU use --amp-dtype bf16"):
        resolve_config(load_spec(CIFAR_SPEC),
                       TrainOverrides(amp=True, amp_dtype="fp16", data_dir="x"), tmp_path)


def test_amp_on_cpu_defaults_to_bf16(tmp_path):
    config = resolve_config(load_spec(CIFAR_SPEC), TrainOverrides(amp=True, data_dir="x"),
                            tmp_path)
    assert config.amp_dtype == "bf16"


def test_cifar_without_data_dir_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(UserError) as info:
        resolve_config(load_spec(CIFAR_SPEC), TrainOverrides(), tmp_path)
    assert str(info.value).startswith("the cifar10 data set needs --data DIR (nothing is "
                                      "downloaded)")


def test_unknown_schedule_is_a_user_error(tmp_path):
    spec = parse_spec("name: t\nstages: [1]\ntrain: {dataset: digits}\n")
    with pytest.raises(UserError, match=r"--schedule must be one of step, cosine; got 'linear'"):
        resolve_config(spec, TrainOverrides(schedule="linear"), tmp_path)


def test_config_round_trips_through_json(tmp_path):
    config = resolve_config(load_spec(CIFAR_SPEC),
                            TrainOverrides(data_dir="x", milestones=(2, 4), epochs=5), tmp_path)
    assert TrainConfig.from_json(config.to_json()) == config


def test_data_for_a_built_in_data_set_is_refused_with_the_fix(tmp_path, run_cli) -> None:
    """`train SPEC --data DIR` whose spec trains on the embedded digits: --data is never
    silently ignored (issue 22, item 3)."""
    import time

    from conftest import tiny_digits_spec

    spec = tmp_path / "digits.yaml"
    spec.write_text(tiny_digits_spec("{dataset: digits}"))
    (tmp_path / "folder").mkdir()
    started = time.monotonic()
    result = run_cli("train", spec, "--data", tmp_path / "folder", "-o", tmp_path / "run")
    assert time.monotonic() - started < 10
    assert result.code == 2
    assert "is not used by the digits data set (the spec's train.dataset)" in result.err
    assert "--dataset imagefolder" in result.err
    assert not (tmp_path / "run").exists()
