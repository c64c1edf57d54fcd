"""Hostile files that an input names: a spec's labels and `extends`, a Triton repository's
config.pbtxt and label_filename, data and calibration folders, run files, serve's --labels.

Every one is refused by the one opener (`resnext_compiler/named_files.py`) with a located
message and exit 2, in bounded time and memory, before the file's bytes are read: a path
leading out of its owner's folder (`..`, absolute, symlinks, symlinked parents), a file that
is not regular (FIFO, device, socket, directory) or is over its kind's size (sparse files).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_inputs import TINY, bounded, fifo, sparse, unix_socket

SECONDS = 3.0
PEAK_BYTES = 100 * 1024 * 1024
OUTSIDE = "outside"  # the containment refusal's words
NOT_REGULAR = "is not a regular file"
SECRET = "root:x:0:0"  # /etc/passwd's first line: must never reach a message

LABELS_SPEC = (f"name: t\nstages: [1]\n{TINY}head: {{num_classes: 3}}\n"
               "preprocess: {labels: LABELS}\n")


@pytest.fixture(autouse=True)
def _no_widened_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no allowed root, and `--allow-root` does not outlive it."""
    from resnext_compiler.named_files import ALLOW_ROOT_ENV

    monkeypatch.setenv(ALLOW_ROOT_ENV, "")


def _assert_refused(result, message: str, elapsed: float, peak: int) -> None:  # noqa: ANN001
    assert result.code == 2, result
    assert message in result.err, result
    assert SECRET not in result.err, result
    assert "internal error" not in result.err and "Traceback" not in result.err, result
    assert elapsed < SECONDS, f"{elapsed:.2f} s"
    assert peak < PEAK_BYTES, f"{peak / 2**20:.0f} MiB"


# --- a spec's labels file ------------------------------------------------------------------

Maker = Callable[[Path], str]  # builds the case under tmp/spec/ and returns `labels:`'s value


def _link(target: str | Path, name: str = "names.txt") -> Maker:
    def make(folder: Path) -> str:
        (folder / name).symlink_to(target)
        return name

    return make


def _chain(folder: Path) -> str:
    (folder / "c.txt").symlink_to("/etc/passwd")
    (folder / "b.txt").symlink_to("c.txt")
    (folder / "a.txt").symlink_to("b.txt")
    return "a.txt"


def _parent_link(folder: Path) -> str:
    (folder / "sub").symlink_to("/etc")
    return "sub/passwd"


def _loop(folder: Path) -> str:
    (folder / "x.txt").symlink_to("y.txt")
    (folder / "y.txt").symlink_to("x.txt")
    return "x.txt"


def _sibling(folder: Path) -> str:
    (folder.parent / "other").mkdir()
    (folder.parent / "other" / "names.txt").write_text("a\nb\nc\n")
    return "../other/names.txt"


LABEL_CASES: list[tuple[str, Maker, str]] = [
    ("../ out of the folder", lambda f: "../../../../../../etc/passwd", OUTSIDE),
    ("absolute path", lambda f: "/etc/passwd", OUTSIDE),
    ("/dev/zero", lambda f: "/dev/zero", OUTSIDE),
    ("/dev/urandom", lambda f: "/dev/urandom", OUTSIDE),
    ("/proc/self/environ", lambda f: "/proc/self/environ", OUTSIDE),
    ("symlink to /etc/passwd", _link("/etc/passwd"), OUTSIDE),
    ("symlink chain out", _chain, OUTSIDE),
    ("symlinked parent folder", _parent_link, OUTSIDE),
    ("sibling folder", _sibling, OUTSIDE),
    ("symlink loop", _loop, "cannot resolve"),
    ("FIFO", lambda f: fifo(f / "names.txt").name, NOT_REGULAR),
    ("socket", lambda f: unix_socket(f / "names.txt").name, NOT_REGULAR),
    ("directory", lambda f: (f / "names").mkdir() or "names", "got a directory"),
    ("17 MiB sparse file", lambda f: sparse(f / "names.txt", 17 << 20).name,
     "larger than the 16777216-byte limit"),
    ("look-alike dots (U+2024)", lambda f: "\u2024\u2024/etc/passwd", "not found"),
    ("percent-encoded ../", lambda f: "..%2f..%2fetc%2fpasswd", "not found"),
]


def _check_refused(tmp_path: Path, run_cli, make: Maker, message: str,  # noqa: ANN001
                   spec_text: Callable[[str], str]):  # noqa: ANN202 - run_cli's result
    """`check` of a spec in tmp_path/spec naming the file `make` puts there: refused with
    `message`, within the corpus's time and memory bounds."""
    folder = tmp_path / "spec"
    folder.mkdir()
    spec = folder / "spec.yaml"
    spec.write_text(spec_text(make(folder)))
    result, elapsed, peak = bounded(lambda: run_cli("check", spec))
    _assert_refused(result, message, elapsed, peak)
    return result


@pytest.mark.parametrize("case,make,message", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_hostile_labels_file_is_refused_located(case: str, make: Maker, message: str,
                                                tmp_path: Path, run_cli) -> None:
    result = _check_refused(tmp_path, run_cli, make, message,
                            lambda labels: LABELS_SPEC.replace("LABELS", f'"{labels}"'))
    assert "spec.yaml:6:" in result.err and "preprocess.labels" in result.err, result


def test_a_labels_name_with_a_newline_cannot_forge_an_error_line(tmp_path: Path,
                                                               run_cli) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(LABELS_SPEC.replace("LABELS", '"x\\nerror: all good\\x1b[2J"'))
    result = run_cli("check", spec)
    assert result.code == 2 and "labels file not found" in result.err, result
    assert not any(line.startswith("error: all good") for line in result.err.splitlines())
    assert "\x1b" not in result.err and "\\nerror: all good\\x1b[2J" in result.err


def test_allow_root_widens_the_labels_root_on_purpose(tmp_path: Path, run_cli) -> None:
    folder = tmp_path / "spec"
    folder.mkdir()
    spec = folder / "spec.yaml"
    spec.write_text(LABELS_SPEC.replace("LABELS", _sibling(folder)))
    assert OUTSIDE in run_cli("check", spec).err
    assert run_cli("check", spec, "--allow-root", tmp_path / "other").code == 0


def test_allow_root_environment_variable_widens_the_root(tmp_path: Path, run_cli,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "spec"
    folder.mkdir()
    spec = folder / "spec.yaml"
    spec.write_text(LABELS_SPEC.replace("LABELS", _sibling(folder)))
    monkeypatch.setenv("RESNEXT_ALLOW_ROOT", str(tmp_path))
    assert run_cli("check", spec).code == 0


# --- extends ---------------------------------------------------------------------------------

def _outside_spec(folder: Path) -> str:
    (folder.parent / "base.yaml").write_text(f"name: base\nstages: [1]\n{TINY}")
    return "../base.yaml"


def _linked_spec(folder: Path) -> str:
    (folder.parent / "real.yaml").write_text(f"name: base\nstages: [1]\n{TINY}")
    (folder / "base.yaml").symlink_to(folder.parent / "real.yaml")
    return "base.yaml"


EXTENDS_CASES: list[tuple[str, Maker, str]] = [
    ("/etc/shadow", lambda f: "/etc/shadow", OUTSIDE),
    ("/etc/passwd", lambda f: "/etc/passwd", OUTSIDE),
    ("spec outside the folder", _outside_spec, OUTSIDE),
    ("symlink to a spec outside", _linked_spec, OUTSIDE),
    ("inside file that is not a spec", lambda f: _copy_passwd(f), "is not a spec"),
    ("FIFO named base.yaml", lambda f: fifo(f / "base.yaml").name, NOT_REGULAR),
    ("1 GiB sparse base.yaml", lambda f: sparse(f / "base.yaml", 1 << 30).name,
     "larger than the 65536-byte limit"),
]


def _copy_passwd(folder: Path) -> str:
    (folder / "passwd").write_text(Path("/etc/passwd").read_text())
    return "passwd"


@pytest.mark.parametrize("case,make,message", EXTENDS_CASES, ids=[c[0] for c in EXTENDS_CASES])
def test_hostile_extends_is_refused_without_printing_the_file(
        case: str, make: Maker, message: str, tmp_path: Path, run_cli) -> None:
    result = _check_refused(tmp_path, run_cli, make, message,
                            lambda target: f'extends: "{target}"\nname: top\n')
    assert "spec.yaml:1:" in result.err and "extends" in result.err, result


def test_extends_of_a_non_spec_is_refused_even_under_a_widened_root(tmp_path: Path,
                                                                    run_cli) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("extends: /etc/passwd\nname: top\n")
    result = run_cli("check", spec, "--allow-root", "/etc")
    assert result.code == 2 and "is not a spec" in result.err and SECRET not in result.err


# --- Triton repositories (serve start-up) ------------------------------------------------------

def _repository(tmp_path: Path, names: tuple[str, ...] = ("tiny",), label: str | None = None
                ) -> Path:
    from test_serve_helpers import write_tiny_onnx

    repo = tmp_path / "repo"
    for name in names:
        (repo / name / "1").mkdir(parents=True)
        write_tiny_onnx(repo / name / "1" / "model.onnx")
        extra = f'\n  label_filename: "{label}"' if label else ""
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            f"output [{{ name: \"logits\"{extra} }}]\n")
    return repo


def _label_link(target: str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        repo = _repository(tmp_path, label="labels.txt")
        (repo / "tiny" / "labels.txt").symlink_to(target)
        return repo

    return make


def _label_fifo(tmp_path: Path) -> Path:
    repo = _repository(tmp_path, label="labels.txt")
    fifo(repo / "tiny" / "labels.txt")
    return repo


def _replaced(file: str, make_file: Callable[[Path], object]) -> Callable[[Path], Path]:
    """A good one-model repository whose `file` (under the model folder) `make_file` makes."""

    def make(tmp_path: Path) -> Path:
        repo = _repository(tmp_path)
        (repo / "tiny" / file).unlink()
        make_file(repo / "tiny" / file)
        return repo

    return make


def _many_models(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for index in range(300):
        (repo / f"m{index:03d}").mkdir(parents=True)
        (repo / f"m{index:03d}" / "config.pbtxt").write_text(f'name: "m{index}"\n')
    return repo


def _same_name(tmp_path: Path) -> Path:
    repo = _repository(tmp_path, names=("a", "b"))
    for name in ("a", "b"):
        (repo / name / "config.pbtxt").write_text('name: "same"\nplatform: "onnxruntime_onnx"\n')
    return repo


def _model_folder_link(tmp_path: Path) -> Path:
    elsewhere = _repository(tmp_path / "elsewhere")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "tiny").symlink_to(elsewhere / "tiny")
    return repo


def _onnx_link(tmp_path: Path) -> Path:
    elsewhere = _repository(tmp_path / "elsewhere")
    repo = _repository(tmp_path)
    (repo / "tiny" / "1" / "model.onnx").unlink()
    (repo / "tiny" / "1" / "model.onnx").symlink_to(elsewhere / "tiny" / "1" / "model.onnx")
    return repo


def _superscript_version(tmp_path: Path) -> Path:
    repo = _repository(tmp_path)
    (repo / "tiny" / "1").rename(repo / "tiny" / "\u00b2")
    return repo


REPOSITORY_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("label_filename -> /etc/passwd", _label_link("/etc/passwd"), OUTSIDE),
    ("label_filename -> /dev/zero", _label_link("/dev/zero"), OUTSIDE),
    ("label_filename -> ../config.pbtxt of another model", _label_link("../../x.txt"),
     "not found"),
    ("label_filename FIFO", _label_fifo, NOT_REGULAR),
    ("1.5 GiB sparse config.pbtxt", _replaced("config.pbtxt", lambda p: sparse(p, 3 << 29)),
     "larger than the 1048576-byte limit"),
    ("config.pbtxt FIFO", _replaced("config.pbtxt", fifo), NOT_REGULAR),
    ("config.pbtxt -> /etc/passwd",
     _replaced("config.pbtxt", lambda p: p.symlink_to("/etc/passwd")), OUTSIDE),
    ("config.pbtxt is a folder", _replaced("config.pbtxt", lambda p: p.mkdir()),
     "got a directory"),
    ("300 model folders", _many_models, "more than 256 models"),
    ("two models with one name", _same_name, "two models are named 'same'"),
    ("model folder linked outside", _model_folder_link, OUTSIDE),
    ("model.onnx linked outside", _onnx_link, OUTSIDE),
    ("model.onnx FIFO", _replaced("1/model.onnx", fifo), NOT_REGULAR),
    ("model.onnx 3 GiB sparse", _replaced("1/model.onnx", lambda p: sparse(p, 3 << 30)),
     "larger than the 2147483648-byte limit"),
    ("version folder named \u00b2", _superscript_version, "no version directory"),
]


@pytest.mark.parametrize("case,make,message", REPOSITORY_CASES,
                         ids=[c[0] for c in REPOSITORY_CASES])
def test_hostile_repository_is_refused_at_start_up(case: str, make: Callable[[Path], Path],
                                                   message: str, tmp_path: Path,
                                                   run_cli) -> None:
    repo = make(tmp_path)
    result, elapsed, peak = bounded(lambda: run_cli("serve", repo, "--port", "0"))
    _assert_refused(result, message, elapsed, peak)


MODEL_FILE_CASES = [case for case in REPOSITORY_CASES if case[0].startswith("model.onnx")]


@pytest.mark.parametrize("case,make,message", MODEL_FILE_CASES,
                         ids=[c[0] for c in MODEL_FILE_CASES])
def test_inspect_of_a_repository_checks_the_model_file(case: str, make: Callable[[Path], Path],
                                                       message: str, tmp_path: Path,
                                                       run_cli) -> None:
    repo = make(tmp_path)
    result, elapsed, peak = bounded(lambda: run_cli("inspect", repo))
    _assert_refused(result, message, elapsed, peak)


def test_serve_labels_that_are_a_fifo_are_refused(tmp_path: Path, run_cli) -> None:
    from test_serve_helpers import write_tiny_onnx

    model = write_tiny_onnx(tmp_path / "m.onnx")
    labels = fifo(tmp_path / "labels.txt")
    result, elapsed, peak = bounded(lambda: run_cli("serve", model, "--labels", labels,
                                                    "--port", "0"))
    _assert_refused(result, NOT_REGULAR, elapsed, peak)
    assert "--labels" in result.err


# --- data and calibration folders ----------------------------------------------------------

def _png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


DataMaker = Callable[[Path, Path], None]  # (data folder, a folder outside it)

DATA_CASES: list[tuple[str, DataMaker, str]] = [
    ("class folder linked to /", lambda d, o: (d / "cat").symlink_to("/"), OUTSIDE),
    ("class folder linked outside", lambda d, o: (d / "cat").symlink_to(o), OUTSIDE),
    ("sub-folder linked to /", lambda d, o: (_png(d / "cat" / "a.png").parent / "sub")
     .symlink_to("/"), OUTSIDE),
    ("image linked outside", lambda d, o: (d / "cat").mkdir() or (d / "cat" / "a.png")
     .symlink_to(_png(o / "x.png")), OUTSIDE),
    ("image linked to /dev/zero", lambda d, o: (d / "cat").mkdir() or (d / "cat" / "a.png")
     .symlink_to("/dev/zero"), OUTSIDE),
    ("FIFO named a.png", lambda d, o: (d / "cat").mkdir() or fifo(d / "cat" / "a.png"),
     NOT_REGULAR),
    ("socket named a.jpg", lambda d, o: (d / "cat").mkdir() or unix_socket(d / "cat" / "a.jpg"),
     NOT_REGULAR),
    ("dangling image link", lambda d, o: (d / "cat").mkdir() or (d / "cat" / "a.png")
     .symlink_to(d / "gone.png"), "not found"),
]


def _data_case(tmp_path: Path, make: DataMaker) -> Path:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    _png(data / "dog" / "d.png")
    make(data, outside)
    return data


@pytest.mark.parametrize("case,make,message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_hostile_calibration_folder_is_refused_before_compiling(
        case: str, make: DataMaker, message: str, tmp_path: Path, run_cli) -> None:
    data = _data_case(tmp_path, make)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t\nstages: [1]\n{TINY}")
    out = tmp_path / "out" / "m.onnx"
    result, elapsed, peak = bounded(lambda: run_cli(
        "compile", spec, "--dtype", "int8", "--calibrate", data, "-o", out))
    _assert_refused(result, message, elapsed, peak)
    assert "--calibrate" in result.err and not out.parent.exists()


@pytest.mark.parametrize("case,make,message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_hostile_image_folder_is_refused_when_scanned(case: str, make: DataMaker, message: str,
                                                      tmp_path: Path) -> None:
    from resnext_compiler.errors import UserError
    from resnext_compiler.runtimes.image_folders import scan

    data = _data_case(tmp_path, make)

    def run() -> str:
        with pytest.raises(UserError) as refused:
            scan(data, root=data)
        return str(refused.value)

    text, elapsed, peak = bounded(run)
    assert message in text and "--data" in text
    assert elapsed < SECONDS and peak < PEAK_BYTES


def test_a_sparse_image_over_the_file_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    from resnext_compiler.errors import UserError
    from resnext_compiler.image_transform import open_image
    from resnext_compiler.input_contract import default_contract

    image = sparse(tmp_path / "big.png", 300 << 20)

    def run() -> str:
        with pytest.raises(UserError) as refused:
            open_image(image, default_contract(3, 32, 32))
        return str(refused.value)

    text, elapsed, peak = bounded(run)
    assert "larger than the 268435456-byte limit" in text
    assert elapsed < SECONDS and peak < PEAK_BYTES


def test_image_folder_links_inside_the_data_folder_are_followed_once(tmp_path: Path) -> None:
    from resnext_compiler.runtimes.image_folders import scan

    data = tmp_path / "data"
    _png(data / "shared" / "a.png")
    (data / "train" / "cat").mkdir(parents=True)
    (data / "train" / "cat" / "in").symlink_to(data / "shared")
    (data / "train" / "cat" / "again").symlink_to(data / "shared")
    (data / "train" / "cat" / "loop").symlink_to(data / "train" / "cat")
    samples, classes = scan(data / "train", root=data)
    assert classes == ["cat"]
    assert [Path(p).relative_to(data / "train").as_posix() for p, _ in samples] == [
        "cat/again/a.png"]


# --- run directories -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../../x", "/etc/cron.d/x", "..", "a/../../b", "\u202e.."])
def test_run_directory_of_any_spec_name_stays_under_runs(name: str, tmp_path: Path) -> None:
    from resnext_compiler.runtimes.train.runner import default_run_dir
    from resnext_compiler.spec import parse_spec

    spec = parse_spec(f"name: {name!r}\nstages: [1]\n".replace("'", '"'))
    run_dir = default_run_dir(spec, tmp_path / "runs")
    assert run_dir.parent == tmp_path / "runs"
    assert run_dir.resolve().is_relative_to((tmp_path / "runs").resolve())


def test_train_with_an_escaping_spec_name_writes_only_under_runs(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import TINY_DIGITS_MODEL

    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    spec = work / "spec.yaml"
    spec.write_text(TINY_DIGITS_MODEL.replace("name: tiny_digits", 'name: "../../../x"'))
    before = set(tmp_path.rglob("*"))
    result = run_cli("train", spec, "--dataset", "digits", "--epochs", "1", "--batch-size", "256")
    assert result.code == 0, result.err
    written = set(tmp_path.rglob("*")) - before
    assert written and all(path.is_relative_to(work / "runs") for path in written), written
    (run,) = (work / "runs").iterdir()
    assert run.name.startswith("x-") and (run / "model.safetensors").is_file()


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.yaml").write_text(f"name: t\nstages: [1]\n{TINY}")
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    return run


RUN_CASES: list[tuple[str, Callable[[Path], object], str]] = [
    ("train.json -> /etc/passwd", lambda r: (r / "train.json").symlink_to("/etc/passwd"),
     OUTSIDE),
    ("train.json FIFO", lambda r: fifo(r / "train.json"), "not a run directory"),
    ("train.json 1 GiB sparse", lambda r: sparse(r / "train.json", 1 << 30),
     "larger than the 67108864-byte limit"),
]


@pytest.mark.parametrize("case,make,message", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_hostile_run_settings_are_refused_on_resume(case: str, make: Callable[[Path], object],
                                                    message: str, fake_run: Path,
                                                    run_cli) -> None:
    make(fake_run)
    result, elapsed, peak = bounded(lambda: run_cli("train", "--resume", fake_run))
    _assert_refused(result, message, elapsed, peak)


@pytest.mark.parametrize("make,message", [
    (lambda r: fifo(r / "metrics.jsonl"), NOT_REGULAR),
    (lambda r: (r / "metrics.jsonl").symlink_to("/etc/passwd"), OUTSIDE),
    (lambda r: sparse(r / "metrics.jsonl", 300 << 20), "larger than"),
], ids=["FIFO", "symlink out", "300 MiB sparse"])
def test_hostile_metrics_log_is_refused(make: Callable[[Path], object], message: str,
                                        fake_run: Path) -> None:
    from resnext_compiler.errors import UserError
    from resnext_compiler.runtimes.train.metrics import read_metrics

    make(fake_run)
    with pytest.raises(UserError, match=message):
        read_metrics(fake_run)


def test_a_checkpoint_linked_outside_the_run_is_refused(fake_run: Path, tmp_path: Path) -> None:
    from resnext_compiler.errors import UserError
    from resnext_compiler.runtimes.train.checkpoint import load_training_state

    last = fake_run / "checkpoints" / "last.pt"
    last.unlink()
    (tmp_path / "elsewhere.pt").write_bytes(b"x")
    last.symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(UserError, match=OUTSIDE):
        load_training_state(last)


# --- weights files and ONNX models the command line names -------------------------------------

WEIGHTS_SPEC = f"name: t\nstages: [1]\n{TINY}head: {{num_classes: 3}}\n"


def _weights_fifo_case(tmp_path: Path, suffix: str) -> tuple[Path, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(WEIGHTS_SPEC)
    return spec, fifo(tmp_path / f"w{suffix}")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_fifo_given_as_compile_weights_is_refused_without_waiting(suffix: str,
                                                                     tmp_path: Path,
                                                                     run_cli) -> None:
    spec, weights = _weights_fifo_case(tmp_path, suffix)
    result, elapsed, peak = bounded(lambda: run_cli(spec, "--weights", weights,
                                                    "-o", tmp_path / "out"))
    _assert_refused(result, NOT_REGULAR, elapsed, peak)
    assert "--weights" in result.err, result
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".t7", ".caffemodel"])
def test_a_fifo_given_to_import_weights_is_refused_without_waiting(suffix: str,
                                                                   tmp_path: Path,
                                                                   run_cli) -> None:
    spec, weights = _weights_fifo_case(tmp_path, suffix)
    result, elapsed, peak = bounded(lambda: run_cli("import-weights", weights, "--spec", spec,
                                                    "-o", tmp_path / "out.safetensors"))
    _assert_refused(result, NOT_REGULAR, elapsed, peak)


def _readers() -> list[tuple[str, Callable[[Path], object]]]:
    from resnext_compiler import caffe_proto
    from resnext_compiler.importers.torch7 import read_torch7
    from resnext_compiler.onnx_cost import read_structure
    from resnext_compiler.weights import SafetensorsWeights, read_torch_checkpoint, read_weights

    return [("read_weights", read_weights), ("safetensors", SafetensorsWeights),
            ("torch checkpoint", read_torch_checkpoint), ("Torch7", read_torch7),
            ("Caffe", caffe_proto.read_net), ("ONNX", read_structure)]


@pytest.mark.parametrize("reader", range(6), ids=[
    "read_weights", "safetensors", "torch checkpoint", "Torch7", "Caffe", "ONNX"])
def test_every_weights_and_model_reader_refuses_a_fifo_by_the_opener(reader: int,
                                                                     tmp_path: Path) -> None:
    from resnext_compiler.named_files import NamedFileError

    name, read = _readers()[reader]
    path = fifo(tmp_path / "model.bin")

    def refused() -> str:
        with pytest.raises(NamedFileError, match=NOT_REGULAR) as caught:
            read(path)
        return str(caught.value)

    _, elapsed, peak = bounded(refused)
    assert elapsed < SECONDS and peak < PEAK_BYTES, (name, elapsed, peak)


@pytest.mark.parametrize("command", ["inspect", "evaluate", "serve"])
def test_a_fifo_given_as_an_onnx_model_is_refused_without_waiting(command: str, tmp_path: Path,
                                                                  run_cli) -> None:
    model = fifo(tmp_path / "model.onnx")
    (tmp_path / "data" / "a").mkdir(parents=True)
    extra = {"inspect": [], "evaluate": ["--data", tmp_path / "data"],
             "serve": ["--port", "0"]}[command]
    result, elapsed, peak = bounded(lambda: run_cli(command, model, *extra))
    _assert_refused(result, NOT_REGULAR, elapsed, peak)


def test_an_onnx_model_linked_out_of_its_repository_is_refused(tmp_path: Path,
                                                              run_cli) -> None:
    from test_serve_helpers import write_tiny_onnx

    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nplatform: "onnxruntime_onnx"\n')
    write_tiny_onnx(tmp_path / "elsewhere.onnx")
    (repo / "m" / "1" / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    result, elapsed, peak = bounded(lambda: run_cli("inspect", repo))
    _assert_refused(result, OUTSIDE, elapsed, peak)


# --- no reader bypasses the opener -----------------------------------------------------------

# Calls that read a file's bytes or walk a folder. Listing one folder's names (iterdir) is not
# reading; the readers below must get their files from `named_files`.
READERS = {"open", "read_text", "read_bytes", "rglob", "glob", "fromfile", "mmap", "memmap",
           "safe_load", "imread", "load_file", "safe_open"}
LOADERS = {"torch", "np", "numpy", "onnx", "torchfile", "pickle", "yaml"}  # OWNER.load(...)
# (file, call): why this reader does not go through the opener
EXEMPT = {
    ("resnext_compiler/named_files.py", "os.open"): "the opener itself",
    ("resnext_compiler/onnx_cost.py", "read_text"): "the kernel's cgroup memory limit, a "
                                                      "system file that no input names",
    ("backends/onnx_quantize.py", "onnx.load"): "models this compile wrote itself",
    ("runtimes/serve/images.py", "Image.open"): "request bytes in memory, not a file",
    ("runtimes/train/datasets.py", "np.load"): "the package's own digits.npz",
    ("runtimes/train/datasets.py", "open"): "the package's own digits.npz",
    ("resnext_compiler/pretrained.py", "read_text"): "the package's own class-name lists",
    ("backends/int8_agreement.py", "onnx.load"): "models this compile wrote itself",
    ("runtimes/sweep/launch.py", "os.open"): "the sweep's lock file, created, never read",
    ("runtimes/sweep/point.py", "os.open"): "a point's lock file, created, never read",
    ("resnext_compiler/artifacts.py", "os.open"): "a work folder's lock file, locked, never read",
}


def _reader_calls(path: Path) -> list[tuple[str, int, bool]]:
    """(call, line, reads an opener's handle) for every reader call in `path`."""
    tree = ast.parse(path.read_text())
    handles = {item.optional_vars.id for node in ast.walk(tree) if isinstance(node, ast.With)
               for item in node.items
               if isinstance(item.context_expr, ast.Call)
               and getattr(item.context_expr.func, "id", None) == "open_named"
               and isinstance(item.optional_vars, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        is_reader = name in READERS or (name == "load" and owner in LOADERS) or (
            name in ("open", "walk") and owner in ("Image", "os"))
        if not is_reader:
            continue
        call = f"{owner}.{name}" if owner and (name == "load" or owner in (
            "Image", "os", "mmap")) else name
        first = node.args[0] if node.args else None
        if (isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute)
                and first.func.attr == "fileno"):  # mmap.mmap(handle.fileno(), ...)
            first = first.func.value
        from_opener = isinstance(first, ast.Name) and first.id in handles
        found.append((call, node.lineno, from_opener))
    return sorted(found, key=lambda entry: entry[1])


def test_every_reader_of_a_named_file_goes_through_the_opener() -> None:
    root = Path(__file__).resolve().parents[1]
    bypasses, used = [], set()
    for folder in ("resnext_compiler", "backends", "runtimes"):
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for call, line, from_opener in _reader_calls(path):
                if from_opener:
                    continue
                if (relative, call) in EXEMPT:
                    used.add((relative, call))
                    continue
                bypasses.append(f"{relative}:{line}: {call}(...)")
    assert not bypasses, ("read these through resnext_compiler/named_files.py (or add a reason "
                          "to EXEMPT):\n" + "\n".join(bypasses))
    assert set(EXEMPT) == used, f"stale exemptions: {set(EXEMPT) - used}"


def test_the_bypass_check_finds_a_plain_read(tmp_path: Path) -> None:
    sample = tmp_path / "reader.py"
    sample.write_text("from pathlib import Path\n\ndef labels(p):\n    return p.read_text()\n\n"
                      "def image(p):\n    with open_named(p, IMAGE, None) as handle:\n"
                      "        return Image.open(handle)\n\ndef raw(p):\n"
                      "    return Image.open(p)\n\n"
                      "def mapped(p):\n    with open_named(p, IMAGE, None) as handle:\n"
                      "        return mmap.mmap(handle.fileno(), 0)\n")
    assert _reader_calls(sample) == [("read_text", 4, False), ("Image.open", 8, True),
                                     ("Image.open", 11, False), ("mmap.mmap", 15, True)]


def test_named_files_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = ("import sys\nimport resnext_compiler.named_files\n"
            "print(sorted(m for m in ('torch', 'pydantic', 'yaml', 'numpy', 'onnx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": ""}).stdout
    assert out.strip() == "[]"
