"""The documentation's commands and snippets, extracted and run (used by tests/test_docs.py).

Markdown is parsed with markdown-it-py (CommonMark; already installed through rich), so a fence
inside a list or with more than three backticks is found as a reader's renderer finds it. What
each fenced block is:

- `bash`, `sh`, `shell`: one command per line (`\\` continues a line, `#` starts a comment);
- `console`: `$ command` lines, each followed by the output it shows;
- `python`: a snippet, run as a script; a `print(...)  # text` line shows its output;
- `yaml` holding `spec_version:`: a spec, checked with `resnext-compile check`;
- `text` (or any other language): not code. A fence without a language is an error, so every
  block says what it is.

Commands run in a fresh folder holding copies of `specs/`, `scripts/`, `docs/` and `README.md`,
with `HOME` pointing there (so `~/data/...` stays inside), never in the repository. A page's
blocks run in order in one folder, as a reader following the page would run them.

A block that needs real data, a GPU, a network or hours says so in an HTML comment right
before it, one directive per line:

    <!-- doc-test
    setup: cifar10 ~/data/cifar-10-batches-py     stand-in data (test_docs.SETUPS), or a command
    replace: SPEC -> specs/resnet18.yaml           text substituted before running
    skip: resnext-compile train SPEC --nproc | needs N processes; tests/test_train_ddp.py
    skip: * | why the whole block is not run
    background: resnext-compile serve             commands that keep running (servers)
    numbers: example                              shown numbers are from one run (text checked)
    exit: 2                                       the commands fail on purpose (error examples)
    -->

`skip:` takes a command prefix (or `*`) and a reason after `|`; skipped commands are counted,
and tests/test_docs.py fails when too many are. `replace:` may use `{port}`, a free TCP port
chosen for the page (`{grpc_port}` a second one); a `background:` command is ready when every
page port it names answers. Shown output is checked line by line, in order (other lines may come
between): `...` and `<placeholder>` match anything, and with `numbers: example` so does every
number.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parent.parent
DIRECTIVE_START = "<!-- doc-test"
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console"}
CODE_LANGUAGES = COMMAND_LANGUAGES | {"python"}
COPIED = ("specs", "scripts", "docs", "README.md")
COMMAND_TIMEOUT_S = 300


def documentation_pages(root: Path = REPO) -> list[Path]:
    """README.md and every Markdown page under docs/: pages added later are picked up."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


@dataclass
class Directives:
    setups: list[str] = field(default_factory=list)
    replacements: list[tuple[str, str]] = field(default_factory=list)
    skips: list[tuple[str, str]] = field(default_factory=list)  # (command prefix or *, reason)
    background: list[str] = field(default_factory=list)
    example_numbers: bool = False
    exit_code: int = 0  # what the block's commands are expected to exit with

    @classmethod
    def parse(cls, comment: str, where: str) -> Directives:
        out = cls()
        body = comment.strip().removeprefix(DIRECTIVE_START).removesuffix("-->")
        for raw in body.splitlines():
            line = raw.strip()
            if not line:
                continue
            key, sep, value = line.partition(":")
            value = value.strip()
            if not sep or not value:
                raise ValueError(f"{where}: doc-test directive {line!r} is not `key: value`")
            if key == "setup":
                out.setups.append(value)
            elif key == "replace":
                old, arrow, new = value.partition(" -> ")
                if not arrow:
                    raise ValueError(f"{where}: `replace:` needs `OLD -> NEW`; got {value!r}")
                out.replacements.append((old, new))
            elif key == "skip":
                prefix, bar, reason = value.partition("|")
                if not bar or not reason.strip():
                    raise ValueError(f"{where}: `skip:` needs `PREFIX | reason`; got {value!r}")
                out.skips.append((prefix.strip(), reason.strip()))
            elif key == "background":
                out.background.append(value)
            elif key == "exit" and value.isdigit():
                out.exit_code = int(value)
            elif key == "numbers" and value in ("example", "exact"):
                out.example_numbers = value == "example"
            else:
                raise ValueError(f"{where}: unknown doc-test directive {line!r}")
        return out


@dataclass
class Example:
    """One command, snippet or spec from a page."""

    page: Path
    line: int  # 1-based line in the page
    kind: str  # "command" | "python" | "spec"
    text: str  # as written in the page
    expected: list[str]  # shown output lines
    skip_reason: str | None = None
    background: bool = False

    @property
    def where(self) -> str:
        page = self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page.name
        return f"{page}:{self.line}"


@dataclass
class Block:
    page: Path
    line: int
    language: str
    directives: Directives
    examples: list[Example]


def parse_page(page: Path) -> tuple[list[Block], list[str]]:
    """The page's fenced blocks and the problems found in its markup (untagged fences, bad or
    stale directives)."""
    tokens = MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8"))
    blocks, problems = [], []
    pending: tuple[str, int] | None = None
    for token in tokens:
        if token.type == "html_block" and token.content.lstrip().startswith(DIRECTIVE_START):
            pending = (token.content, token.map[0] + 1)
            continue
        if token.type != "fence":
            if pending is not None and token.type not in ("list_item_open", "bullet_list_open",
                                                          "ordered_list_open"):
                problems.append(f"{page.name}:{pending[1]}: doc-test directive not right "
                                "before a fenced block")
                pending = None
            continue
        line = token.map[0] + 1
        where = f"{page.name}:{line}"
        language = token.info.split()[0].lower() if token.info.strip() else ""
        comment, pending = pending, None
        if not language:
            problems.append(f"{where}: fenced block without a language; tag it `bash`, "
                            "`console`, `python`, `yaml` or `text`")
            continue
        try:
            directives = Directives.parse(comment[0], where) if comment else Directives()
        except ValueError as exc:
            problems.append(str(exc))
            continue
        examples = _examples(page, line + 1, language, token.content, directives)
        if comment and not examples:
            problems.append(f"{where}: doc-test directive before a block that is not code")
        blocks.append(Block(page, line, language, directives, examples))
        problems += _stale_directives(where, directives, token.content, examples)
    return blocks, problems


def _examples(page: Path, first_line: int, language: str, content: str,
              directives: Directives) -> list[Example]:
    out: list[Example] = []
    if language == "python":
        expected = [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s+#\s?(.*)$", content,
                                                           re.MULTILINE)]
        out.append(Example(page, first_line, "python", content, expected))
    elif language == "yaml" and re.search(r"^spec_version:", content, re.MULTILINE):
        out.append(Example(page, first_line, "spec", content, []))
    elif language in COMMAND_LANGUAGES:
        out = _commands(page, first_line, content, console=language == "console")
    for example in out:
        for prefix, reason in directives.skips:
            if prefix == "*" or example.text.startswith(prefix):
                example.skip_reason = reason
                break
        example.background = any(example.text.startswith(p) for p in directives.background)
    return out


def _commands(page: Path, first_line: int, content: str, console: bool) -> list[Example]:
    out: list[Example] = []
    lines = content.splitlines()
    i = 0
    while i < len(lines):
        raw, number = lines[i], first_line + i
        i += 1
        if console and not raw.startswith("$ "):
            if out:
                out[-1].expected.append(raw.rstrip())
            continue
        text = raw[2:] if console else raw
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        while text.rstrip().endswith("\\") and i < len(lines):
            text = text.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        out.append(Example(page, number, "command", text.strip(), []))
    for example in out:
        while example.expected and not example.expected[-1].strip():
            example.expected.pop()
    return out


def _stale_directives(where: str, directives: Directives, content: str,
                      examples: list[Example]) -> list[str]:
    problems = []
    texts = [e.text for e in examples] or [content]
    for old, _ in directives.replacements:
        if not any(old in text for text in texts):
            problems.append(f"{where}: `replace: {old} -> ...` but the block has no {old!r}")
    for prefix, _ in directives.skips:
        if prefix != "*" and not any(e.text.startswith(prefix) for e in examples):
            problems.append(f"{where}: `skip: {prefix} | ...` matches no command of the block")
    for prefix in directives.background:
        if not any(e.text.startswith(prefix) for e in examples):
            problems.append(f"{where}: `background: {prefix}` matches no command of the block")
    return problems


# --- expected output -------------------------------------------------------------------------

_WILDCARDS = re.compile(r"(\.\.\.|…|<[^<>\s][^<>]*>)")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def line_pattern(shown: str, example_numbers: bool) -> re.Pattern[str]:
    """A shown output line as a pattern: `...` and `<placeholder>` match anything; with
    `example_numbers`, so does each number."""
    parts = []
    for piece in _WILDCARDS.split(shown.strip()):
        if _WILDCARDS.fullmatch(piece):
            parts.append(".*")
        elif example_numbers:
            parts += [re.escape(text) if k % 2 == 0 else r"[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?"
                      for k, text in enumerate(_split_numbers(piece))]
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def _split_numbers(text: str) -> list[str]:
    out, last = [], 0
    for m in _NUMBER.finditer(text):
        out += [text[last:m.start()], m.group()]
        last = m.end()
    return [*out, text[last:]]


def missing_output(shown: list[str], actual: str, example_numbers: bool) -> list[str]:
    """Shown lines that do not appear, in order, in `actual` (empty when all do)."""
    lines = [line.strip() for line in actual.splitlines()]
    position, missing = 0, []
    for wanted in shown:
        if not wanted.strip() or _WILDCARDS.fullmatch(wanted.strip()):
            continue
        pattern = line_pattern(wanted, example_numbers)
        for k in range(position, len(lines)):
            if pattern.fullmatch(lines[k]):
                position = k + 1
                break
        else:
            missing.append(wanted)
    return missing


# --- running ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_workdir(workdir: Path) -> dict[str, str]:
    """Copy what the docs' relative paths refer to; return the commands' environment."""
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name)
        elif source.exists():
            shutil.copy2(source, workdir / name)
    env = {k: v for k, v in os.environ.items() if k != "RESNEXT_DEBUG"}
    # matplotlib keeps its font cache under HOME; keep using the real one (seconds per plot).
    env.setdefault("MPLCONFIGDIR", _matplotlib_config_dir())
    env["HOME"] = str(workdir)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def in_workdir(workdir: Path, path: str) -> Path:
    """A path as the docs' commands see it (`~` is the work folder, as HOME is)."""
    return workdir / path.removeprefix("~/")


def _matplotlib_config_dir() -> str:
    import matplotlib

    return matplotlib.get_configdir()


class PageRunner:
    """Runs a page's blocks in order in one folder; collects failures instead of stopping."""

    def __init__(self, workdir: Path, setups: dict[str, Callable[..., None]]):
        self.workdir = workdir
        self.env = prepare_workdir(workdir)
        self.setups = setups
        self.port = free_port()
        # placeholder -> a free port chosen for the page (a server may listen on several)
        self.ports = {"{port}": self.port, "{grpc_port}": free_port()}
        self.failures: list[str] = []
        self.background: list[tuple[subprocess.Popen, Path]] = []
        self.timings: list[tuple[float, str]] = []  # (seconds, where: text), for the record

    def run_block(self, block: Block) -> None:
        examples = [e for e in block.examples if e.skip_reason is None]
        if not examples:
            return
        for setup in block.directives.setups:
            self._setup(setup, block)
        for example in examples:
            started = time.monotonic()
            self._run(example, block.directives)
            self.timings.append((time.monotonic() - started, f"{example.where}: {example.text}"))

    def _run(self, example: Example, directives: Directives) -> None:
        text = self._substitute(example.text, directives)
        if example.kind == "command" and example.background:
            self._start(example, text, directives)
        elif example.kind == "command":
            self._check(example, self._shell(text), directives)
        elif example.kind == "python":
            script = self.workdir / f"snippet_{example.page.stem}_{example.line}.py"
            script.write_text(text)
            self._check(example, self._shell(f"{shlex.quote(sys.executable)} "
                                             f"{shlex.quote(script.name)}"),
                        directives)
        elif example.kind == "spec":
            spec = self.workdir / f"spec_{example.page.stem}_{example.line}.yaml"
            spec.write_text(text)
            self._check(example, self._shell(f"resnext-compile check {spec.name}"),
                        directives)

    def _substitute(self, text: str, directives: Directives) -> str:
        for old, new in directives.replacements:
            for placeholder, port in self.ports.items():
                new = new.replace(placeholder, str(port))
            text = text.replace(old, new)
        return text

    def _setup(self, setup: str, block: Block) -> None:
        words = shlex.split(setup)
        if words[0] in self.setups:
            self.setups[words[0]](self.workdir, *words[1:])
            return
        result = self._shell(self._substitute(setup, block.directives))
        if result.returncode != 0:
            self.failures.append(f"{block.page.name}:{block.line}: setup {setup!r} failed "
                                 f"(exit {result.returncode}):\n{result.stdout[-2000:]}")

    def _shell(self, command: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.workdir,
                                  env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(command, -1, f"timed out: {exc}")

    def _check(self, example: Example, result: subprocess.CompletedProcess[str],
               directives: Directives) -> None:
        if result.returncode != directives.exit_code:
            self.failures.append(f"{example.where}: `{example.text}` exited "
                                 f"{result.returncode} (expected {directives.exit_code}):\n"
                                 f"{result.stdout[-3000:]}")
            return
        missing = missing_output(example.expected, result.stdout, directives.example_numbers)
        if missing:
            self.failures.append(f"{example.where}: `{example.text}` did not print the lines "
                                 f"the page shows: {missing}\nit printed:\n"
                                 f"{result.stdout[-3000:]}")

    def _start(self, example: Example, text: str, directives: Directives) -> None:
        log = self.workdir / f"background_{example.line}.log"
        with log.open("w") as sink:
            process = subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=self.workdir,
                                       env=self.env, stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.background.append((process, log))
        # wait for every page port the command names (the page's {port} when it names none)
        ports = [port for port in self.ports.values() if str(port) in text] or [self.port]
        deadline = time.monotonic() + 120
        waiting = list(ports)
        while waiting and time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=1).close()
                waiting.pop(0)
            except OSError:
                time.sleep(0.2)
        if process.poll() is not None or waiting:
            self.failures.append(f"{example.where}: `{example.text}` did not start listening "
                                 f"on port {waiting or ports}:\n{log.read_text()[-3000:]}")
            return
        time.sleep(0.3)  # let the start-up lines reach the log
        missing = missing_output(example.expected, log.read_text(), directives.example_numbers)
        if missing:
            self.failures.append(f"{example.where}: `{example.text}` did not print {missing}\n"
                                 f"it printed:\n{log.read_text()[-3000:]}")

    def close(self) -> None:
        for process, _ in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def census(pages: list[Path]) -> dict:
    """How many commands, snippets and specs the pages hold, and which are not run, by reason."""
    examples = [e for page in pages for block in parse_page(page)[0] for e in block.examples]
    skipped: dict[str, int] = {}
    for example in examples:
        if example.skip_reason is not None:
            skipped[example.skip_reason] = skipped.get(example.skip_reason, 0) + 1
    kinds: dict[str, int] = {}
    for example in examples:
        kinds[example.kind] = kinds.get(example.kind, 0) + 1
    return {"total": len(examples), "kinds": kinds, "skipped": sum(skipped.values()),
            "skipped_by_reason": skipped}


if __name__ == "__main__":  # python tests/markdown_examples.py: the census, for the record
    import json

    print(json.dumps(census(documentation_pages()), indent=2))
