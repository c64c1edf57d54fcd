"""`resnext-compile evaluate SPEC --weights W`: single-crop top-1/top-5 error and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_digits_spec
from safetensors.torch import save_file

SPEC = tiny_digits_spec("{dataset: digits}")


def model_and_spec(tmp_path: Path):
    from resnext_compiler.backends.torch_module import build_module
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec

    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return build_module(compile_spec(load_spec(path)), seed=0), path


def test_evaluate_counts_top1_and_top5_misses_over_the_val_split(tmp_path, run_cli):
    from resnext_compiler.runtimes.train.datasets import open_dataset
    from resnext_compiler.spec import load_spec

    model, spec_path = model_and_spec(tmp_path)
    # Make the classifier answer "always class 3, then 1, 4, 0, 5": top-5 hits are known.
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([6.0, 8.0, 0, 10.0, 7.0, 5.0, 0, 0, 0, 0]))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    labels = open_dataset(load_spec(spec_path), "digits", None).val.labels
    top1 = 100 * float((labels != 3).double().mean())
    top5 = 100 * float((~torch.isin(labels, torch.tensor([3, 1, 4, 0, 5]))).double().mean())

    result = run_cli("evaluate", spec_path, "--weights", tmp_path / "w.safetensors", "--json")
    assert result.code == 0, result.err
    measured = json.loads(result.out)
    assert measured["images"] == 355
    assert measured["top1_error"] == pytest.approx(top1)
    assert measured["top5_error"] == pytest.approx(top5)

    text = run_cli("evaluate", spec_path, "--weights", tmp_path / "w.safetensors")
    assert text.out.endswith(f"single-crop top-1 error {top1:.2f}%, top-5 error {top5:.2f}% "
                             "on 355 images\n")


def test_evaluate_accepts_a_plain_state_dict_with_a_ddp_prefix(tmp_path, run_cli):
    model, spec_path = model_and_spec(tmp_path)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    result = run_cli("evaluate", spec_path, "--weights", tmp_path / "w.pt", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["images"] == 355


def test_evaluate_with_weights_of_another_network_lists_the_mismatch(tmp_path, run_cli):
    model, spec_path = model_and_spec(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["fc.weight"] = torch.zeros(7, 64)
    save_file(state, tmp_path / "w.safetensors")
    result = run_cli("evaluate", spec_path, "--weights", tmp_path / "w.safetensors")
    assert result.code == 2
    assert result.err == ("error: weights w.safetensors do not fit tiny_digits (1 wrong shapes, "
                          "0 missing, 0 unexpected):\n  fc.weight: expected shape [10, 64], "
                          "got [7, 64]\n")


def test_evaluate_with_a_missing_weights_file_is_a_user_error(tmp_path, run_cli):
    _, spec_path = model_and_spec(tmp_path)
    result = run_cli("evaluate", spec_path, "--weights", tmp_path / "nope.safetensors")
    assert result.code == 2
    assert result.err == f"error: weights file not found: {tmp_path / 'nope.safetensors'}\n"


def test_evaluate_with_a_damaged_weights_file_is_a_user_error(tmp_path, run_cli):
    _, spec_path = model_and_spec(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    result = run_cli("evaluate", spec_path, "--weights", tmp_path / "bad.pt")
    assert result.code == 2
    assert result.err.startswith(f"error: {tmp_path / 'bad.pt'}: cannot read as a PyTorch "
                                 "checkpoint: ")


def test_evaluate_on_an_image_folder_reads_only_val(tmp_path, run_cli):
    import shutil

    from test_train_data import small_spec, write_folder

    from resnext_compiler.backends.torch_module import build_module
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec

    write_folder(tmp_path / "images", per_class=3)
    shutil.rmtree(tmp_path / "images" / "train")  # evaluation needs only val/
    spec_path = small_spec(tmp_path, classes=2)
    model = build_module(compile_spec(load_spec(spec_path)), seed=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    result = run_cli("evaluate", spec_path, "--weights", tmp_path / "w.safetensors", "--dataset",
                     "imagefolder", "--data", tmp_path / "images", "--workers", "0", "--json")
    assert result.code == 0, result.err
    measured = json.loads(result.out)
    assert measured["images"] == 6
    assert measured["top5_error"] == 0.0  # two classes


def test_form_a_spec_evaluates_form_c_weights_like_the_form_c_spec(tmp_path, run_cli):
    """The one weights loader converts block forms for `evaluate` as for `compile --weights`."""
    model, spec_path = model_and_spec(tmp_path)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong mapping would show
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buffer.normal_(0, 0.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              tmp_path / "c.safetensors")
    form_a = tmp_path / "tiny_a.yaml"
    form_a.write_text(f"extends: {spec_path.name}\nblock: {{form: A}}\n")

    results = {}
    for form, spec in (("C", spec_path), ("A", form_a)):
        result = run_cli("evaluate", spec, "--weights", tmp_path / "c.safetensors", "--json")
        assert result.code == 0, result.err
        results[form] = json.loads(result.out)
    assert results["A"]["images"] == results["C"]["images"] == 355
    assert results["A"]["top1_error"] == results["C"]["top1_error"]
    assert results["A"]["top5_error"] == results["C"]["top5_error"]
    assert results["A"]["loss"] == pytest.approx(results["C"]["loss"], rel=1e-5)


def test_a_model_without_class_names_and_another_class_count_is_refused_before_evaluating(
        tmp_path, run_cli):
    """Issue 22, item 4: 10 outputs, no names, 3 folders: refused (was a 100%-error run and an
    IndexError with --predictions)."""
    import time

    import numpy as np
    from PIL import Image
    from test_serve_helpers import write_tiny_onnx

    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    for name in ("a", "b", "c"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "val" / name / "0.png")
    started = time.monotonic()
    result = run_cli("evaluate", model, "--data", tmp_path / "val", "--predictions",
                     tmp_path / "out.csv")
    assert time.monotonic() - started < 20
    assert result.code == 2, result
    assert "3 class folders but the model has 10 outputs and records no class names" in result.err
    assert not (tmp_path / "out.csv").exists()


def test_predictions_leave_the_label_empty_for_an_output_without_a_name(tmp_path) -> None:
    from resnext_compiler.runtimes.evaluation import Prediction, write_predictions

    path = write_predictions(tmp_path / "p.csv", [Prediction("x.png", 0, 7, 1.5)], ("a", "b"))
    assert path.read_text().splitlines()[1] == "x.png,0,7,,1.5"


def test_folders_named_unlike_the_model_s_classes_are_refused_before_evaluating(tmp_path,
                                                                                run_cli):
    """Issue 22, item 4: a model with class names and a folder whose names differ."""
    import numpy as np
    import onnx
    from PIL import Image
    from test_serve_helpers import write_tiny_onnx

    from resnext_compiler.artifact_format import KEY_CLASS_NAMES

    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    named = tmp_path / "named.onnx"
    loaded = onnx.load(model)
    entry = loaded.metadata_props.add()
    entry.key, entry.value = KEY_CLASS_NAMES, json.dumps([f"digit{i}" for i in range(10)])
    onnx.save(loaded, named)
    for name in ("digit1", "cat"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "val" / name / "0.png")
    result = run_cli("evaluate", named, "--data", tmp_path / "val")
    assert result.code == 2, result
    assert "class folders ['cat'] are not among the model's classes (digit0, digit1" in result.err


def test_top_k_misses_rank_ties_as_a_stable_sort_and_cap_k_at_the_class_count() -> None:
    import numpy as np

    from resnext_compiler.runtimes.evaluation import top_k_misses

    logits = np.array([[1.0, 3.0, 2.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0], [0.0, float("nan"), 1.0]])
    # row 0: the target ranks third; rows 1, 2: a tie puts the lower index ahead; row 3: NaN
    assert top_k_misses(logits, np.array([0, 0, 1, 1]), k=2) == (3, 2)
    assert top_k_misses(logits, np.array([0, 0, 1, 1]), k=5) == (3, 1)  # k = 3 classes
    rows = np.random.default_rng(0).normal(size=(64, 10)).round(1)  # ties included
    targets = np.arange(64) % 10
    order = np.argsort(-rows, axis=1, kind="stable")
    expected = (int((order[:, 0] != targets).sum()),
                int((~(order[:, :5] == targets[:, None]).any(axis=1)).sum()))
    assert top_k_misses(rows, targets) == expected
