"""Hostile specs and options: every one refused with a located message and exit 2, in bounded
time and memory, before any work (the corpus is generated here, at test time)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_inputs import TINY, billion_laughs, bounded, merge_key_bomb

SECONDS = 2.0
PEAK_BYTES = 200 * 1024 * 1024

SpecMaker = Callable[[Path], Path]


def text(content: str | bytes, name: str = "spec.yaml") -> SpecMaker:
    def make(tmp: Path) -> Path:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    return make


def fifo(tmp: Path) -> Path:
    path = tmp / "spec.fifo"
    os.mkfifo(path)
    return path


def extends_chain(length: int) -> SpecMaker:
    def make(tmp: Path) -> Path:
        (tmp / "base0.yaml").write_text(f"name: base\nstages: [1]\n{TINY}")
        for i in range(1, length):
            (tmp / f"base{i}.yaml").write_text(f"extends: base{i - 1}.yaml\n")
        spec = tmp / "spec.yaml"
        spec.write_text(f"extends: base{length - 1}.yaml\nname: top\n")
        return spec

    return make


def big_int(field: str, value: int) -> SpecMaker:
    placements = {
        "cardinality": f"block: {{cardinality: {value}}}\nstages: [1]\n",
        "base_width": f"block: {{base_width: {value}}}\nstages: [1]\n",
        "group_width": f"stages: [{{depth: 1, group_width: {value}}}]\n",
        "channels": f"input: {{channels: {value}}}\nstages: [1]\n",
        "num_classes": f"head: {{num_classes: {value}}}\nstages: [1]\n",
        "width": f"stages: [{{depth: 1, width: {value}}}]\n",
    }
    return text(f"name: big\n{placements[field]}")


# (case, spec maker, expected message fragment, expected location "FILE:LINE" or None)
CASES: list[tuple[str, SpecMaker, str, str | None]] = [
    ("file over 64 KiB", text("name: big\nstages: [1]\n#" + "x" * (65 << 10)),
     "larger than the 65536-byte limit", "spec.yaml:1"),
    ("50 MB scalar", text("name: " + "x" * (50 << 20) + "\nstages: [1]\n"),
     "larger than the 65536-byte limit", "spec.yaml:1"),
    ("/dev/zero", lambda tmp: Path("/dev/zero"), "not a regular file", None),
    ("FIFO", fifo, "not a regular file", None),
    ("directory", lambda tmp: tmp, "got a directory", None),
    ("billion laughs", text(billion_laughs()), "more than 20000 YAML nodes", "spec.yaml:"),
    ("merge-key bomb", text(merge_key_bomb()), "more than 20000 YAML nodes", "spec.yaml:"),
    ("recursive alias", text("name: r\nstages: &s [*s]\n"), "YAML nodes", "spec.yaml:2"),
    ("5000 nested brackets", text("name: n\nstages: " + "[" * 5000 + "]" * 5000 + "\n"),
     "nested more than 64 levels", "spec.yaml:2"),
    ("NUL byte", text(b"name: a\x00b\nstages: [1]\n"), "U+0000 is not allowed", "spec.yaml:1:8"),
    ("extends /proc/self/environ", text("extends: /proc/self/environ\nname: p\n"),
     "outside", "spec.yaml:1"),
    ("extends /dev/zero", text("extends: /dev/zero\nname: p\n"), "outside", "spec.yaml:1"),
    ("extends with NUL", text('extends: "a\\0b.yaml"\nname: p\n'), "NUL character",
     "spec.yaml:1"),
    ("200-file extends chain", extends_chain(200),
     "extends: extends chain is longer than 16 files", "base185.yaml:1:1"),
    ("cardinality 2**63", big_int("cardinality", 2**63), "less than or equal to 4096",
     "spec.yaml:2"),
    ("base_width 10**30", big_int("base_width", 10**30), "less than or equal to 65536",
     "spec.yaml:2"),
    ("group_width 2**63", big_int("group_width", 2**63), "less than or equal to 65536",
     "spec.yaml:2"),
    ("channels 10**30", big_int("channels", 10**30), "less than or equal to 65536",
     "spec.yaml:2"),
    ("num_classes 2**63", big_int("num_classes", 2**63), "less than or equal to 1048576",
     "spec.yaml:2"),
    ("width 10**30", big_int("width", 10**30), "less than or equal to 65536", "spec.yaml:2"),
    ("lr .inf", text(f"name: i\nstages: [1]\n{TINY}train: {{lr: .inf}}\n"), "finite number",
     "spec.yaml:5"),
    ("dropout .nan", text("name: i\nstages: [1]\nhead: {dropout: .nan}\n"), "finite number",
     "spec.yaml:3"),
    ("stage depth 20000", text("name: d\nstages: [3, 4, 20000, 3]\n"),
     "less than or equal to 10000", "spec.yaml:2:16"),
    ("5000 blocks in total", text("name: d\nstages: [10, 4990]\n"),
     "5,000 blocks, over the budget of 2,000 (raise it with --budget blocks=N)",
     "spec.yaml:2:14"),
    ("10,000 explicit stages", text("name: s\nstages:\n" + "  - {depth: 1, width: 8}\n" * 10000),
     "larger than the 65536-byte limit", "spec.yaml:1"),
    ("65 explicit stages", text("name: s\nstages:\n" + "  - {depth: 1, width: 8}\n" * 65),
     "should have at most 64 items", "spec.yaml:2"),
    ("20 default-width stages", text("name: w\nstages: [" + ", ".join(["1"] * 20) + "]\n"),
     "channels, more than 4,194,304", "spec.yaml:2"),
    ("60000x60000 input", text("name: big\ninput: {height: 60000, width: 60000}\n"
                               "stages: [1, 1, 1, 1]\n"),
     "multiply-accumulates per sample, over the budget", "spec.yaml:3"),
    ("form A with cardinality 4096", text("name: a\nblock: {cardinality: 4096, base_width: 1, "
                                          "form: A}\nstages: [3, 4, 6, 3]\n"),
     "IR nodes in two blocks per stage alone", "spec.yaml:2"),
]


@pytest.fixture(autouse=True)
def _warm(tmp_path_factory: pytest.TempPathFactory, run_cli) -> None:
    """Import and run the whole check path once, so measurements see the work, not imports."""
    spec = tmp_path_factory.getbasetemp() / "warm.yaml"
    spec.write_text(f"name: warm\nstages: [1]\n{TINY}")
    assert run_cli("check", spec).code == 0


@pytest.mark.parametrize("case,make,message,where", CASES, ids=[c[0] for c in CASES])
def test_hostile_spec_is_refused_located_fast_and_small(
        case: str, make: SpecMaker, message: str, where: str | None, tmp_path: Path,
        run_cli) -> None:
    path = make(tmp_path)
    if case == "FIFO":  # nobody ever writes to it: reading would block forever
        guard = threading.Timer(10, lambda: os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        guard.start()
    result, elapsed, peak = bounded(lambda: run_cli("check", path))
    if case == "FIFO":
        guard.cancel()
    assert result.code == 2, result
    assert message in result.err, result
    if where is not None:
        assert re.search(rf"(^|/){re.escape(where)}", result.err, re.M), result
    assert "internal error" not in result.err and "Traceback" not in result.err
    assert elapsed < SECONDS, f"{case}: {elapsed:.2f} s"
    assert peak < PEAK_BYTES, f"{case}: {peak / 2**20:.0f} MiB"


def test_whole_corpus_in_one_process_stays_under_200_mb_of_resident_memory(
        tmp_path: Path) -> None:
    """The same corpus through one `check` process: its peak RSS, measured by the kernel."""
    paths = []
    for index, (case, make, _, _) in enumerate(CASES):
        if case in ("FIFO", "directory"):
            continue
        folder = tmp_path / f"case{index}"
        folder.mkdir()
        paths.append(str(make(folder)))
    # the child reports its own peak resident set size as it exits: VmHWM belongs to the
    # process image (ru_maxrss would carry over the forking parent's peak across exec)
    code = ("import re, sys\nfrom resnext_compiler.cli import main\ntry:\n"
            "    main(sys.argv[1:])\nfinally:\n    print('peak-rss-kib', re.search(r'VmHWM:"
            "\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)")
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", code, "check", *paths], capture_output=True,
                             text=True, timeout=120)
    elapsed = time.perf_counter() - started
    err = process.stderr
    assert process.returncode == 2, err[-2000:]
    assert f"{len(paths)} of {len(paths)} spec(s) have problems" in err
    assert "internal error" not in err and "Traceback" not in err
    assert elapsed < SECONDS * len(paths)
    peak_kib = int(re.search(r"peak-rss-kib (\d+)", err).group(1))
    assert peak_kib < 200 * 1024, f"{peak_kib / 1024:.0f} MiB"


def test_budget_flag_sets_the_limit(tmp_path: Path, run_cli) -> None:
    spec = tmp_path / "deep.yaml"
    spec.write_text(f"name: deep\n{TINY}stages: [{{depth: 12, width: 4}}]\n"
                    "block: {type: basic}\n")
    assert run_cli("check", spec).code == 0
    refused = run_cli("check", spec, "--budget", "blocks=11")
    assert refused.code == 2, refused
    assert "12 blocks, over the budget of 11 (raise it with --budget blocks=N)" in refused.err
    assert run_cli("check", spec, "--budget", "blocks=12").code == 0
    small = run_cli("check", spec, "--budget", "params=1k", "--budget", "memory=1KiB")
    assert small.code == 2 and "over the budget of 1,000 (raise it with --budget params=N)" \
        in small.err, small
    for bad in ("bogus=1", "params", "params=0", "params=nan", "memory=1ZB"):
        result = run_cli("check", spec, "--budget", bad)
        assert result.code == 2 and "--budget" in result.err, (bad, result)


def test_budget_estimate_equals_the_compiled_cost_for_every_shipped_spec() -> None:
    from resnext_compiler.budget import estimate
    from resnext_compiler.passes.complexity import analyse
    from resnext_compiler.pipeline import compile_spec
    from resnext_compiler.spec import load_spec

    for path in sorted(Path("specs").glob("*.yaml"))[:4]:
        spec = load_spec(path)
        cost, _ = estimate(spec)
        graph = compile_spec(spec)
        real = analyse(graph)
        assert (cost.nodes, cost.params, cost.macs, cost.activation_bytes) == (
            len(graph.nodes), real.params, real.macs, real.activation_bytes), path


def test_compile_refuses_a_batch_whose_activations_exceed_the_budget(tmp_path: Path,
                                                                     run_cli) -> None:
    result, elapsed, _ = bounded(lambda: run_cli(
        "compile", "specs/resnext50_32x4d.yaml", "--batch", "100000", "-o", tmp_path / "m.onnx"))
    assert result.code == 2, result
    assert "bytes of activations at batch 100000, over the budget" in result.err
    assert "--budget memory=N" in result.err
    assert not (tmp_path / "m.onnx").exists()
    assert elapsed < SECONDS


OPTION_CASES = [
    (["train", "--lr", "nan"], "'--lr': must be a finite number"),
    (["train", "--lr", "inf"], "'--lr': must be a finite number"),
    (["train", "--lr", "-1"], "'--lr': must be > 0"),
    (["train", "--epochs", str(10**30)], "'--epochs': must be >= 1 and <= 100000, got a 31-digit"),
    (["train", "--label-smoothing", "5"], "'--label-smoothing': must be >= 0 and < 1, got 5"),
    (["train", "--amp-dtype", "int3"], "'--amp-dtype': must be one of bf16, fp16"),
    (["train", "--batch-size", "1000000000"], "'--batch-size': must be >= 1 and <= 1048576"),
    (["train", "--weight-decay", "nan"], "'--weight-decay': must be a finite number"),
    (["compile", "specs/resnet18.yaml", "--batch", "1000000000"],
     "--batch must be an integer in 1..1048576"),
    (["compile", "specs/resnet18.yaml", "--batch", "²"], "--batch must be an integer"),
    (["serve", "x.onnx", "--max-delay-ms", "nan"], "'--max-delay-ms': must be a finite number"),
    (["serve", "x.onnx", "--max-body-mb", "inf"], "'--max-body-mb': must be a finite number"),
    (["serve", "x.onnx", "--body-timeout-s", "0"], "'--body-timeout-s': must be >= 0.1"),
]


@pytest.mark.parametrize("args,message", OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_bad_option_is_one_line_exit_2(args: list[str], message: str, run_cli) -> None:
    result, elapsed, _ = bounded(lambda: run_cli(*args))
    assert result.code == 2, result
    assert message in result.err, result
    assert result.err.count("\n") == 1, result  # one line
    assert elapsed < SECONDS


def test_terminal_escapes_in_a_name_are_not_printed_raw(tmp_path: Path, run_cli) -> None:
    spec = tmp_path / "evil.yaml"
    spec.write_text(f'name: "evil\\e[2J\\e]0;title\\a\\u202e"\nstages: [1]\n{TINY}')
    result = run_cli("inspect", spec)
    assert result.code == 0, result
    assert "\x1b" not in result.out and "\x07" not in result.out and "\u202e" not in result.out
    assert "evil\\x1b[2J\\x1b]0;title\\x07\\u202e" in result.out
    bad = tmp_path / "bad\x1b[31m.yaml"
    bad.write_text("name: x\n")
    refused = run_cli("check", bad)
    assert refused.code == 2 and "\x1b" not in refused.err and "bad\\x1b[31m.yaml" in refused.err


def test_class_names_from_a_model_file_are_escaped_by_inspect(tmp_path: Path, run_cli) -> None:
    import onnx
    from test_serve_helpers import write_tiny_onnx

    from resnext_compiler.artifact_format import contract_metadata
    from resnext_compiler.input_contract import InputContract

    path = write_tiny_onnx(tmp_path / "tiny.onnx")
    labels = tuple(f"class{i}" for i in range(9)) + ("evil\x1b]2;pwned\x07",)
    contract = InputContract(3, 32, 32, "direct", 1.0, labels=labels)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        **contract_metadata(contract)})
    onnx.save(model, str(path))
    result = run_cli("inspect", path)
    assert result.code == 0, result
    assert "class0" in result.out
    assert "\x1b" not in result.out and "\x07" not in result.out
