"""The documentation runs: every command, snippet and spec in README.md and docs/ (see
tests/markdown_examples.py for the conventions), so the docs cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from markdown_examples import (
    REPO,
    PageRunner,
    census,
    documentation_pages,
    in_workdir,
    line_pattern,
    missing_output,
    parse_page,
)
from tiny_data import write_cifar10, write_folder

# At most this share of the docs' commands, snippets and specs may be marked not run.
MAX_SKIPPED_FRACTION = 0.25


def _torchvision_weights(workdir: Path, model: str, target: str) -> None:
    """A torchvision state dict (random initialisation: nothing is downloaded)."""
    import torch
    import torchvision

    torch.save(getattr(torchvision.models, model)().state_dict(), in_workdir(workdir, target))


def _digits_folder(workdir: Path, root: str) -> None:
    """The embedded digits' validation images as PNG class folders (`root/val/<digit>/`), the
    layout `evaluate MODEL.onnx --data DIR` reads."""
    from PIL import Image

    from resnext_compiler.runtimes.train.datasets import open_dataset
    from resnext_compiler.spec import parse_spec

    spec = parse_spec("spec_version: 1\nname: d\ninput: {channels: 1, height: 8, width: 8}\n"
                      "stem: cifar\nstages: [1]\nhead: {num_classes: 10}\n")
    val = open_dataset(spec, "digits", None).val
    for i, (image, label) in enumerate(zip(val.images, val.labels, strict=True)):
        folder = in_workdir(workdir, root) / "val" / val.classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")


# `setup: NAME ARGS...` directives: tiny stand-ins for data the docs' commands need.
SETUPS = {
    "cifar10": lambda workdir, root: write_cifar10(in_workdir(workdir, root), per_batch=8),
    "imagefolder": lambda workdir, root: write_folder(in_workdir(workdir, root), per_class=4),
    "torchvision": _torchvision_weights,
    "digits-folder": _digits_folder,
}

PAGES = documentation_pages()


def test_every_page_is_found():
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    assert {"README.md", "docs/training.md", "docs/onnx.md", "docs/serving.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_page_markup_says_what_each_block_is(page):
    _, problems = parse_page(page)
    assert not problems, "\n".join(problems)


def test_only_a_bounded_share_of_examples_is_not_run():
    numbers = census(PAGES)
    assert numbers["total"] >= 40, numbers
    assert numbers["skipped"] <= MAX_SKIPPED_FRACTION * numbers["total"], numbers


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_page_commands_and_snippets_run(page, tmp_path):
    blocks, problems = parse_page(page)
    assert not problems, "\n".join(problems)
    runner = PageRunner(tmp_path, SETUPS)
    try:
        for block in blocks:
            runner.run_block(block)
    finally:
        runner.close()
    for seconds, what in sorted(runner.timings, reverse=True)[:5]:  # shown with -s / -rP
        print(f"{seconds:6.1f} s  {what}")
    assert not runner.failures, "\n\n".join(runner.failures)


# --- the machinery itself ----------------------------------------------------------------------


def _page(tmp_path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_commands_skips_replacements_and_output_are_read_from_a_page(tmp_path):
    page = _page(tmp_path, (
        "Intro.\n\n<!-- doc-test\nreplace: SPEC -> a.yaml\n"
        "skip: resnext-compile train | needs hours\n-->\n"
        "```console\n$ resnext-compile inspect SPEC \\\n    --json\n{\"a\": 1}\n"
        "$ resnext-compile train SPEC\n```\n\n"
        "```python\nprint(1 + 1)  # 2\n```\n"))
    blocks, problems = parse_page(page)
    assert problems == []
    first, second = blocks
    assert [(e.line, e.text, e.expected, e.skip_reason) for e in first.examples] == [
        (8, "resnext-compile inspect SPEC --json", ['{"a": 1}'], None),
        (11, "resnext-compile train SPEC", [], "needs hours")]
    assert first.directives.replacements == [("SPEC", "a.yaml")]
    assert second.examples[0].kind == "python" and second.examples[0].expected == ["2"]


def test_untagged_blocks_and_stale_or_misplaced_directives_are_problems(tmp_path):
    page = _page(tmp_path, (
        "```\nresnext-compile x\n```\n\n"
        "<!-- doc-test\nreplace: RUN -> r\n-->\n```bash\necho hi\n```\n\n"
        "<!-- doc-test\nskip: * | x\n-->\n\nA paragraph.\n\n```bash\necho\n```\n\n"
        "<!-- doc-test\nfrobnicate: yes\n-->\n```bash\necho\n```\n"))
    problems = parse_page(page)[1]
    assert len(problems) == 4, problems
    assert "without a language" in problems[0]
    assert "has no 'RUN'" in problems[1]
    assert "not right before" in problems[2]
    assert "unknown doc-test directive" in problems[3]


def test_shown_output_matches_in_order_with_wildcards():
    actual = "run directory: runs/x-20261130-120000\nepoch 1/2: loss 0.51\ndone\n"
    assert missing_output(["run directory: runs/x-...", "done"], actual, False) == []
    assert missing_output(["done", "epoch 1/2: loss 0.51"], actual, False) == [
        "epoch 1/2: loss 0.51"]
    assert missing_output(["epoch 1/2: loss 0.49"], actual, False) == ["epoch 1/2: loss 0.49"]
    assert missing_output(["epoch 10/10: loss 0.0424"], actual, True) == []
    assert line_pattern("at http://127.0.0.1:<port>/v2", False).fullmatch(
        "at http://127.0.0.1:8123/v2")


def test_a_failing_command_or_drifted_output_is_reported_with_its_line(tmp_path):
    page = _page(tmp_path, "```console\n$ echo one\ntwo\n$ false\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    runner = PageRunner(work, SETUPS)
    for block in parse_page(page)[0]:
        runner.run_block(block)
    assert len(runner.failures) == 2
    assert runner.failures[0].startswith("page.md:2: `echo one` did not print")
    assert runner.failures[1].startswith("page.md:4: `false` exited 1 (expected 0)")


def test_an_error_example_must_fail_with_the_stated_code(tmp_path):
    page = _page(tmp_path, "<!-- doc-test\nexit: 1\n-->\n```console\n$ false\n$ true\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    runner = PageRunner(work, SETUPS)
    runner.run_block(parse_page(page)[0][0])
    assert len(runner.failures) == 1
    assert runner.failures[0].startswith("page.md:6: `true` exited 0 (expected 1)")


def test_commands_run_in_the_work_folder_not_the_repository(tmp_path):
    page = _page(tmp_path, "```bash\ntouch made-by-docs && ls specs/resnet50.yaml\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    runner = PageRunner(work, SETUPS)
    runner.run_block(parse_page(page)[0][0])
    assert runner.failures == []
    assert (work / "made-by-docs").exists() and not (REPO / "made-by-docs").exists()
