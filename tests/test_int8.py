"""`--dtype int8 --calibrate DIR`: a trained network quantized on its own training images keeps
its accuracy when measured on the artifact, serves like any ONNX file, and every way of asking
for int8 without real calibration images is refused before any work."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from conftest import TINY_DIGITS_MODEL
from PIL import Image

from resnext_compiler.cli import main

DIGITS_SPEC = TINY_DIGITS_MODEL + (
    "train: {dataset: digits, epochs: 4, batch_size: 32, lr: 0.1, schedule: cosine}\n")


def cli(*args: object) -> None:
    """The CLI in-process for module fixtures (run_cli is per test); fails on a non-zero exit."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None), args


def write_split(images, folder: Path) -> None:
    """A digits split as PNG files, folder/<label>/<index>.png."""
    for index in range(len(images)):
        target = folder / str(int(images.labels[index])) / f"{index:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images.images[index, 0].numpy()).save(target)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny digits network trained for 4 epochs, its train/val images as PNG files, and
    its float32 and int8 exports (int8 calibrated on the default number of training images)."""
    from resnext_compiler.runtimes.train.datasets import open_dataset
    from resnext_compiler.spec import load_spec

    root = tmp_path_factory.mktemp("int8")
    (root / "spec.yaml").write_text(DIGITS_SPEC)
    cli("train", root / "spec.yaml", "--run-dir", root / "run", "--threads", "1")
    data = open_dataset(load_spec(root / "spec.yaml"), "digits", None, augment="none")
    write_split(data.train, root / "train")
    write_split(data.val, root / "val")
    spec, weights = root / "run" / "spec.yaml", root / "run" / "model.safetensors"
    cli(spec, "--weights", weights, "-o", root / "fp32.onnx")
    cli(spec, "--weights", weights, "-o", root / "int8.onnx", "--dtype", "int8",
        "--calibrate", root / "train")
    return root


def evaluate(run_cli, model: Path, data: Path, predictions: Path) -> dict:
    result = run_cli("evaluate", model, "--data", data, "--json", "--predictions", predictions)
    assert result.code == 0, result
    return json.loads(result.out)


def test_int8_top1_error_is_within_one_point_of_float32_on_the_artifact(trained, run_cli):
    fp32 = evaluate(run_cli, trained / "fp32.onnx", trained / "val", trained / "fp32.csv")
    int8 = evaluate(run_cli, trained / "int8.onnx", trained / "val", trained / "int8.csv")
    assert fp32["images"] == int8["images"] == 355
    assert fp32["top1_error"] < 30  # the network learned the digits
    print(f"top-1 error: float32 {fp32['top1_error']:.2f}%, int8 {int8['top1_error']:.2f}%")
    assert abs(int8["top1_error"] - fp32["top1_error"]) <= 1.0, (fp32, int8)


def test_int8_file_records_its_calibration_and_holds_int8_weights(trained):
    model = onnx.load(str(trained / "int8.onnx"))
    onnx.checker.check_model(model, full_check=True)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert metadata["dtype"] == "int8"
    assert metadata["calibration_method"] == "minmax"
    assert metadata["calibration_images"] == "64"
    assert metadata["calibration_folder"] == "train"
    assert metadata["preprocess.mean"] == "[0.3053]"  # the training run's contract travels
    assert metadata["int8.held_out_images"] == "64" and metadata["int8.check"] == "passed"
    assert float(metadata["int8.top1_agreement"]) >= 97
    weights = {init.name: init for init in model.graph.initializer}
    conv_weights = [weights[node.input[0]] for node in model.graph.node
                    if node.op_type == "DequantizeLinear" and node.input[0] in weights
                    and len(weights[node.input[0]].dims) == 4]
    assert len(conv_weights) == sum(node.op_type == "Conv" for node in model.graph.node)
    assert {w.data_type for w in conv_weights} == {onnx.TensorProto.INT8}
    # 7-bit weights: 2 x 255 x 64 = 32,640 fits the int16 pair sums of u8s8 kernels without
    # VNNI, so no CPU saturates (docs/onnx.md, "Portable by construction")
    for weight in conv_weights:
        values = onnx.numpy_helper.to_array(weight)
        assert -64 <= values.min() and values.max() <= 64, weight.name
    graph_input, graph_output = model.graph.input[0], model.graph.output[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # clients send FP32
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_file_serves_through_classify_and_tritonclient(trained, run_cli):
    import onnxruntime as ort
    from test_serve_helpers import running_server

    from resnext_compiler.artifact_format import read_contract
    from resnext_compiler.image_transform import load_images_for_model
    from resnext_compiler.runtimes.serve.config import ServeConfig
    from resnext_compiler.runtimes.serve.server import load_models

    model = trained / "int8.onnx"
    evaluate(run_cli, model, trained / "val", trained / "served.csv")
    with (trained / "served.csv").open() as handle:
        answers = {row["image"]: int(row["predicted"]) for row in csv.DictReader(handle)}
    images = sorted(answers)[::50]  # 8 images: one server batch
    inputs = load_images_for_model(images, read_contract(model))
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"input": inputs})[0]
    models, labels = load_models(model, ServeConfig(device="cpu", max_batch=8))
    with running_server(models, labels) as server:
        with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            tensor = triton.InferInput("input", list(inputs.shape), "FP32")
            tensor.set_data_from_numpy(inputs)
            logits = client.infer(models[0].name, [tensor]).as_numpy("logits")
        served = {}
        for image in images:
            reply = httpx.post(f"{server.url}/v1/classify?top_k=1",
                               files={"file": (Path(image).name, Path(image).read_bytes())})
            assert reply.status_code == 200, reply.text
            served[image] = reply.json()["predictions"][0]["index"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert served == {image: answers[image] for image in images}


def test_triton_repository_takes_int8_with_float32_tensors_on_the_cpu(trained, run_cli):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = trained / "repo"
    result = run_cli(trained / "run" / "spec.yaml", "--weights",
                     trained / "run" / "model.safetensors", "--backend", "triton", "-o", repo,
                     "--dtype", "int8", "--calibrate", trained / "train",
                     "--calibration-images", "16")
    assert result.code == 0, result
    config = text_format.Parse((repo / "tiny_digits" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert config.input[0].data_type == config.output[0].data_type == model_config_pb2.TYPE_FP32
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    model = onnx.load(str(repo / "tiny_digits" / "1" / "model.onnx"))
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert (metadata["dtype"], metadata["calibration_images"]) == ("int8", "16")
    evaluated = evaluate(run_cli, repo, trained / "val", trained / "repo.csv")
    assert evaluated["images"] == 355


# --- measured int8: the agreement report, the float fallback, the threshold -------------------

OUTLIER = 1000.0  # how much larger one channel of layer1.0's first activation is made


@pytest.fixture(scope="module")
def outlier_weights(trained: Path) -> Path:
    """The trained weights with one activation made hostile to int8 on any CPU, the float32
    function unchanged: channel 0 of layer1.0's first BatchNorm (so of the Relu after it) is
    multiplied by OUTLIER and the grouped conv that reads it divides its weights by OUTLIER.
    One scale per tensor then spends the 8-bit range on that channel and rounds the other
    channels to a few levels; 7-bit weights and every CPU kernel change nothing about it."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(trained / "run" / "model.safetensors")
    weights["layer1.0.bn1.weight"][0] *= OUTLIER
    weights["layer1.0.bn1.bias"][0] *= OUTLIER
    group = weights["layer1.0.conv2.weight"].shape[0] // 2  # cardinality 2: group 0 reads 0-1
    weights["layer1.0.conv2.weight"][:group, 0] /= OUTLIER
    path = trained / "outlier.safetensors"
    save_file(weights, path)
    return path


def int8_metadata(path: Path) -> dict[str, str]:
    return {e.key: e.value for e in onnx.load(str(path), load_external_data=False).metadata_props}


def compile_outlier(run_cli, trained: Path, weights: Path, output: Path, *args: object):
    return run_cli(trained / "run" / "spec.yaml", "--weights", weights, "-o", output,
                   "--dtype", "int8", "--calibrate", trained / "train", *args)


def test_an_outlier_activation_breaks_int8_without_the_fallback(trained, outlier_weights,
                                                                 run_cli):
    same = compile_outlier(run_cli, trained, outlier_weights, trained / "outlier-fp32.onnx")
    assert same.code == 0, same
    result = compile_outlier(run_cli, trained, outlier_weights, trained / "no-fallback.onnx",
                             "--int8-min-agreement", "0")  # the first attempt passes
    assert result.code == 0, result
    metadata = int8_metadata(trained / "no-fallback.onnx")
    assert json.loads(metadata["int8.kept_float"]) == []
    assert float(metadata["int8.top1_agreement"]) < 50
    fp32 = evaluate(run_cli, trained / "fp32.onnx", trained / "val", trained / "a.csv")
    int8 = evaluate(run_cli, trained / "no-fallback.onnx", trained / "val", trained / "b.csv")
    print(f"without the fallback: float32 {fp32['top1_error']:.2f}%, int8 "
          f"{int8['top1_error']:.2f}%")
    assert int8["top1_error"] > fp32["top1_error"] + 30


def test_the_fallback_keeps_the_outlier_in_float_and_int8_matches_float32(trained,
                                                                           outlier_weights,
                                                                           run_cli):
    output = trained / "fallback.onnx"
    result = compile_outlier(run_cli, trained, outlier_weights, output)
    assert result.code == 0, result
    assert "kept in float: " in result.out and "attempts: " in result.out
    metadata = int8_metadata(output)
    kept = json.loads(metadata["int8.kept_float"])
    assert {"conv1", "fc"} <= set(kept)  # stem and classifier first
    assert {"layer1.0.conv1", "layer1.0.relu1", "layer1.0.conv2"} <= set(kept)  # by error
    attempts = json.loads(metadata["int8.attempts"])
    assert float(attempts[0]["top1_agreement"]) < 50
    assert float(metadata["int8.top1_agreement"]) >= 97 and metadata["int8.check"] == "passed"
    assert len(attempts) <= 4
    fp32 = evaluate(run_cli, trained / "fp32.onnx", trained / "val", trained / "c.csv")
    int8 = evaluate(run_cli, output, trained / "val", trained / "d.csv")
    print(f"with the fallback: float32 {fp32['top1_error']:.2f}%, int8 "
          f"{int8['top1_error']:.2f}%, kept in float {kept}")
    assert abs(int8["top1_error"] - fp32["top1_error"]) <= 1.0, (fp32, int8)


def test_a_file_below_the_threshold_is_never_written_without_the_flag(trained, outlier_weights,
                                                                      run_cli, monkeypatch):
    from resnext_compiler.backends import onnx_quantize

    monkeypatch.setattr(onnx_quantize, "MAX_ATTEMPTS", 2)  # stem and classifier do not help
    out = trained / "refused"
    out.mkdir()
    start = time.monotonic()
    result = compile_outlier(run_cli, trained, outlier_weights, out / "m.onnx")
    assert result.code == 2, result
    assert time.monotonic() - start < 60
    assert "stays below --int8-min-agreement 97% after 2 attempt(s) (best " in result.err
    assert "0 node(s) in float: top-1 agreement" in result.err
    assert "2 node(s) in float: top-1 agreement" in result.err
    assert "--accept-int8-loss" in result.err and "Traceback" not in result.err
    assert list(out.iterdir()) == []  # no file, no temporary folder
    accepted = compile_outlier(run_cli, trained, outlier_weights, out / "m.onnx",
                               "--accept-int8-loss")
    assert accepted.code == 0, accepted
    metadata = int8_metadata(out / "m.onnx")
    assert float(metadata["int8.top1_agreement"]) < 97
    assert metadata["int8.check"] == "below the threshold, written with --accept-int8-loss"
    assert "check: below the threshold" in accepted.out
    assert [p.name for p in out.iterdir()] == ["m.onnx"]


def test_inspect_shows_the_agreement_report(trained, run_cli):
    result = run_cli("inspect", trained / "int8.onnx")
    assert result.code == 0, result
    assert "int8 vs float32: top-1 agreement" in result.out
    assert "on 64 held-out images (every other image of the --calibrate folder)" in result.out
    assert "top-1 error: float32" in result.out and "kept in float: nothing" in result.out
    report = json.loads(run_cli("inspect", trained / "int8.onnx", "--json").out)["int8"]
    assert report["held_out_images"] == "64" and report["kept_float"] == []
    assert float(report["top1_agreement"]) >= 97 and float(report["logit_cosine"]) > 0.99


def test_validate_folder_measures_on_its_images(trained, run_cli):
    output = trained / "validated.onnx"
    result = run_cli(trained / "run" / "spec.yaml", "--weights",
                     trained / "run" / "model.safetensors", "-o", output, "--dtype", "int8",
                     "--calibrate", trained / "train", "--validate", trained / "val",
                     "--calibration-images", "32")
    assert result.code == 0, result
    metadata = int8_metadata(output)
    assert metadata["calibration_images"] == "32"
    assert (metadata["int8.held_out"], metadata["int8.held_out_images"]) == (
        "--validate folder val", "32")
    assert 0 <= float(metadata["int8.top1_error_int8"]) < 30


def test_too_few_images_to_hold_out_are_refused(run_cli, tiny_spec, tmp_path):
    write_images(tmp_path / "calib", 7)
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                  "-o", tmp_path / "m.onnx")
    assert "7 image(s); an int8 compile holds out every other image" in err
    assert "at least 4 held out (8 images in all)" in err and "--validate DIR" in err
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                  "--validate", tmp_path / "nowhere", "-o", tmp_path / "m.onnx")
    assert "--validate" in err and "nowhere: does not exist" in err


@pytest.mark.parametrize("value", ["-1", "101", "nan"])
def test_min_agreement_out_of_range_is_refused(run_cli, tiny_spec, tmp_path, value):
    write_images(tmp_path / "calib", 8)
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                  "--int8-min-agreement", value, "-o", tmp_path / "m.onnx")
    assert "--int8-min-agreement" in err


def start_slowed_compile(spec: Path, tmp_path: Path, out: Path, env: dict[str, str]):
    """The CLI in a child process with quantize_static slowed down: it finishes calibrating
    (onnxruntime's own temporary folder exists), then signals that it is in the middle of the
    work and waits. Returns the process once it is there."""
    import subprocess
    import sys

    write_images(tmp_path / "calib", 8)
    started = tmp_path / "started"
    code = ("import sys, time\nfrom pathlib import Path\n"
            "from resnext_compiler.backends import onnx_quantize\n"
            "original = onnx_quantize.quantize_static\n"
            "def slow(*args, **kwargs):\n"
            "    original(*args, **kwargs)\n"
            f"    Path({str(started)!r}).write_text('x')\n"
            "    time.sleep(60)\n"
            "onnx_quantize.quantize_static = slow\n"
            "from resnext_compiler.cli import main\nmain(sys.argv[1:])\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(spec), "--dtype", "int8", "--calibrate",
         str(tmp_path / "calib"), "-o", str(out / "m.onnx")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not started.exists():
        proc.kill()
        pytest.fail(str(proc.communicate()))
    return proc


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupted_int8_compile_leaves_nothing_behind(tiny_spec, tmp_path, signal_name):
    import os
    import signal
    import subprocess
    import sys

    out, temp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    # importing onnxruntime leaves a session-id file in the temporary folder: not ours
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env=env, check=True)
    before = sorted(temp.iterdir())
    proc = start_slowed_compile(tiny_spec, tmp_path, out, env)
    try:
        assert [p.name for p in out.iterdir() if p.name.startswith(".fp32-")]  # mid-work
        proc.send_signal(getattr(signal, signal_name))
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err  # the CLI's exit status for an interruption
    assert "Traceback" not in err
    assert list(out.iterdir()) == [] and sorted(temp.iterdir()) == before


def test_the_next_int8_compile_removes_what_a_killed_one_left(run_cli, tiny_spec, tmp_path):
    """SIGKILL runs no cleanup: the work folders stay until a compile into the same folder
    finds that their owner is gone."""
    import os

    out = tmp_path / "out"
    out.mkdir()
    proc = start_slowed_compile(tiny_spec, tmp_path, out, dict(os.environ))
    proc.kill()
    proc.communicate(timeout=30)
    left = sorted(p.name.split("-")[0] for p in out.iterdir())
    assert left == [".fp32", ".int8"], left
    result = run_cli(tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                     "-o", out / "m.onnx")
    assert result.code == 0, result.err
    assert [p.name for p in out.iterdir()] == ["m.onnx"]


def test_an_int8_compile_leaves_the_work_folders_of_a_live_one_alone(run_cli, tiny_spec,
                                                                      tmp_path):
    import os

    out = tmp_path / "out"
    out.mkdir()
    proc = start_slowed_compile(tiny_spec, tmp_path, out, dict(os.environ))
    try:
        theirs = sorted(p.name for p in out.iterdir())
        result = run_cli(tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                         "-o", out / "m.onnx")
        assert result.code == 0, result.err
        assert sorted(p.name for p in out.iterdir()) == sorted([*theirs, "m.onnx"])
    finally:
        proc.kill()
        proc.wait()


# --- refusals: never quantize on made-up data, and say so before any work ---------------------

@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_DIGITS_MODEL)
    return path


def write_images(folder: Path, count: int, size: tuple[int, int] = (10, 12)) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, size, np.uint8)).save(folder / f"{index}.png")
    return folder


def refused(run_cli, *args: object) -> str:
    start = time.monotonic()
    result = run_cli(*args)
    assert result.code == 2, result
    assert time.monotonic() - start < 20, "a refusal must come before the work"
    assert "Traceback" not in result.err
    return result.err


def test_int8_without_calibrate_is_refused(run_cli, tiny_spec, tmp_path):
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "-o", tmp_path / "m.onnx")
    assert "--dtype int8 needs --calibrate DIR" in err
    assert not (tmp_path / "m.onnx").exists()


def test_missing_empty_and_image_less_folders_are_refused(run_cli, tiny_spec, tmp_path):
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "nowhere",
                  "-o", tmp_path / "m.onnx")
    assert "--calibrate" in err and "nowhere: does not exist" in err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("not an image")
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "empty",
                  "-o", tmp_path / "m.onnx")
    assert "no images" in err
    (tmp_path / "file.png").write_bytes(b"")
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "file.png",
                  "-o", tmp_path / "m.onnx")
    assert "is not a folder" in err
    assert not (tmp_path / "m.onnx").exists()


def test_a_big_network_is_refused_before_it_is_compiled(run_cli, tmp_path):
    from conftest import SPECS

    (tmp_path / "empty").mkdir()
    err = refused(run_cli, SPECS / "resnext101_32x8d.yaml", "--dtype", "int8", "--calibrate",
                  tmp_path / "empty", "-o", tmp_path / "out" / "m.onnx")
    assert "no images" in err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_named_and_nothing_is_left_behind(run_cli, tiny_spec, tmp_path):
    write_images(tmp_path / "calib" / "a", 7)
    (tmp_path / "calib" / "b").mkdir()
    (tmp_path / "calib" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    out.mkdir()
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                  "-o", out / "m.onnx")
    assert "cannot read image" in err and "broken.png" in err
    assert list(out.iterdir()) == []  # no model, no temporary float32 file


def test_images_for_a_model_that_takes_no_images_are_refused(run_cli, write_spec, tmp_path):
    spec = write_spec(TINY_DIGITS_MODEL.replace("channels: 1", "channels: 2"))
    write_images(tmp_path / "calib", 8)
    err = refused(run_cli, spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                  "-o", tmp_path / "m.onnx")
    assert "2 input channels" in err


@pytest.mark.parametrize("count", ["0", "1025"])
def test_calibration_image_count_out_of_range_is_refused(run_cli, tiny_spec, tmp_path, count):
    write_images(tmp_path / "calib", 2)
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                  "--calibration-images", count, "-o", tmp_path / "m.onnx")
    assert f"--calibration-images must be between 1 and 1024, got {count}" in err


def test_calibration_flags_without_int8_and_other_backends_are_refused(run_cli, tiny_spec,
                                                                       tmp_path):
    write_images(tmp_path / "calib", 2)
    err = refused(run_cli, tiny_spec, "--calibrate", tmp_path / "calib", "-o", tmp_path / "m")
    assert ("--calibrate, --calibration-images, --validate, --int8-min-agreement and "
            "--accept-int8-loss are for --dtype int8") in err
    err = refused(run_cli, tiny_spec, "--backend", "torch", "--dtype", "int8", "--calibrate",
                  tmp_path / "calib", "-o", tmp_path / "m.py")
    assert "--dtype int8 is for the onnx and triton backends" in err


def test_a_huge_folder_is_searched_only_up_to_the_scan_bound(run_cli, tiny_spec, tmp_path,
                                                             monkeypatch):
    from resnext_compiler.backends import onnx_quantize

    monkeypatch.setattr(onnx_quantize, "MAX_FILES_SCANNED", 20)
    (tmp_path / "calib").mkdir()
    for index in range(30):
        (tmp_path / "calib" / f"{index:02d}.txt").write_text("x")
    err = refused(run_cli, tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                  "-o", tmp_path / "m.onnx")
    assert "more than 20 files searched" in err


def test_calibration_images_are_found_recursively_in_sorted_order(tmp_path):
    from resnext_compiler.backends.onnx_quantize import find_calibration_images

    write_images(tmp_path / "b", 2)
    write_images(tmp_path / "a" / "deep", 2)
    (tmp_path / "a" / "readme.md").write_text("not an image")
    found = find_calibration_images(tmp_path, 3)
    assert [p.relative_to(tmp_path).as_posix() for p in found.images] == [
        "a/deep/0.png", "a/deep/1.png", "b/0.png"]


def test_a_static_batch_model_calibrates_with_a_partial_last_batch(run_cli, tiny_spec,
                                                                   tmp_path):
    import onnxruntime as ort

    write_images(tmp_path / "calib", 10)  # 5 calibrate, 5 are held out: two partial batches
    result = run_cli(tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib",
                     "--batch", "4", "-o", tmp_path / "m.onnx")
    assert result.code == 0, result
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 1, 8, 8]
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["calibration_images"] == "5"
    logits = session.run(None, {"input": np.zeros((4, 1, 8, 8), np.float32)})[0]
    assert logits.shape == (4, 10) and np.isfinite(logits).all()


def test_an_int8_compile_never_imports_torch(tiny_spec, tmp_path):
    import subprocess
    import sys

    write_images(tmp_path / "calib", 8)
    code = ("import sys\nfrom resnext_compiler.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_spec), "--dtype", "int8",
                           "--calibrate", str(tmp_path / "calib"), "-o", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_in_graph_preprocessing_quantizes_like_the_external_transform(run_cli, tiny_spec,
                                                                       tmp_path):
    import onnxruntime as ort

    from resnext_compiler.artifact_format import read_contract
    from resnext_compiler.image_transform import model_input

    write_images(tmp_path / "calib", 8)
    for name, extra in (("pixels", ("--image-input",)), ("floats", ())):
        result = run_cli(tiny_spec, "--dtype", "int8", "--calibrate", tmp_path / "calib", *extra,
                         "-o", tmp_path / f"{name}.onnx")
        assert result.code == 0, result
    pixels = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 1), np.uint8)
    by_pixels = ort.InferenceSession(str(tmp_path / "pixels.onnx"),
                                     providers=["CPUExecutionProvider"])
    assert by_pixels.get_inputs()[0].type == "tensor(uint8)"
    floats = model_input(pixels, read_contract(tmp_path / "floats.onnx"))
    expected = ort.InferenceSession(str(tmp_path / "floats.onnx"),
                                    providers=["CPUExecutionProvider"]).run(None,
                                                                            {"input": floats})[0]
    logits = by_pixels.run(None, {"input": pixels})[0]
    assert np.sqrt(np.mean((logits - expected) ** 2)) < 0.05 * expected.std()


# --- the measuring functions on numbers worked out by hand -----------------------------------

def test_agreement_counts_top1_matches_cosine_and_errors():
    from resnext_compiler.backends.int8_agreement import compare_logits

    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    quantized = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 3.0]])
    agreement = compare_logits(reference, quantized, targets=np.array([0, 1, 1, 1]))
    assert agreement.images == 4
    assert agreement.top1_agreement == 75.0  # the third image flips
    assert agreement.logit_cosine == pytest.approx(0.75)  # cosines 1, 1, 0, 1
    assert (agreement.float32_top1_error, agreement.int8_top1_error) == (25.0, 0.0)
    assert agreement.to_metadata()["int8.top1_agreement"] == "75.00"


def test_class_folder_targets_need_every_image_in_a_known_class(tmp_path):
    from resnext_compiler.backends.int8_agreement import folder_targets

    images = [tmp_path / "cat" / "1.png", tmp_path / "dog" / "a" / "2.png"]
    assert folder_targets(images, tmp_path, ("dog", "cat")).tolist() == [1, 0]
    assert folder_targets(images, tmp_path, None) is None
    assert folder_targets([*images, tmp_path / "3.png"], tmp_path, ("dog", "cat")) is None
    assert folder_targets([tmp_path / "bird" / "4.png"], tmp_path, ("dog", "cat")) is None


def test_an_outlier_channel_scores_low_and_dead_channels_are_skipped():
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    from resnext_compiler.backends.int8_agreement import median_channel_ratio

    values = np.random.default_rng(0).uniform(0, 1, (4, 4, 16)).astype(np.float32)
    values[:, 3] = 0  # a dead channel: nothing to lose
    uint8 = (0, 0, 255, compute_signal_to_quantization_noice_ratio)
    normal = median_channel_ratio(values, 1 / 255, *uint8)
    values[:, 0] *= 1000  # one channel spends the range
    outlier = median_channel_ratio(values, 1000 / 255, *uint8)
    print(f"median channel SQNR: normal {normal:.1f} dB, with an outlier {outlier:.1f} dB")
    assert normal > 40 and outlier < 10


def test_a_uint8_model_that_records_no_contract_calibrates_on_its_nhwc_layout(run_cli, tiny_spec,
                                                                              tmp_path):
    """A model taking uint8 [N, H, W, C] with no `preprocess.*` metadata (one made elsewhere)
    is read as NHWC: 1 channel of 8x8 here, not 8 channels of 8x1."""
    import onnxruntime as ort

    from resnext_compiler.artifact_format import PREPROCESS_PREFIX, contract_or_default
    from resnext_compiler.backends.onnx_quantize import quantize_int8, split_calibration
    from resnext_compiler.input_contract import UINT8_NHWC
    from resnext_compiler.onnx_cost import read_structure

    result = run_cli(tiny_spec, "--image-input", "-o", tmp_path / "pixels.onnx")
    assert result.code == 0, result
    model = onnx.load(str(tmp_path / "pixels.onnx"))
    kept = [entry for entry in model.metadata_props if not entry.key.startswith(PREPROCESS_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "bare.onnx"))

    contract = contract_or_default(read_structure(tmp_path / "bare.onnx"))
    assert (contract.channels, contract.height, contract.width) == (1, 8, 8)
    assert contract.input_format == UINT8_NHWC and contract.colour == "grey"

    calibration, held_out = split_calibration(write_images(tmp_path / "calib", 8), 8, None)
    quantize_int8(tmp_path / "bare.onnx", tmp_path / "int8.onnx", calibration, held_out=held_out)
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 1), np.uint8)
    logits = session.run(None, {"input": pixels})[0]
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
