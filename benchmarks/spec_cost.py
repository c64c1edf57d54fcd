"""Cost of `check` / `inspect` against spec size: the parser and the budget are linear.

Three series, each timed in-process (median of 3; start-up excluded, it is in cli_startup.py):
- explicit stages (1..64, the schema's maximum), each `{depth: 1, width: 8}`: parse + validate
  + budget + compile, i.e. what `check` does per file;
- file bytes (a 2-stage spec padded with comment lines up to the 64 KiB limit): parse only;
- blocks in one stage (10..2000, the default budget): the budget's reduced spec is constant,
  lowering the full network is linear.
Also times the refusals that used to be the expensive cases (20,000-deep stage, alias bomb,
10,000 explicit stages). Run by hand:  python benchmarks/spec_cost.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from resnext_compiler.budget import estimate
from resnext_compiler.errors import SpecError
from resnext_compiler.pipeline import compile_spec
from resnext_compiler.spec import load_spec

HEAD = "name: bench\ninput: {channels: 3, height: 32, width: 32}\nstem: cifar\n"


def timed(run: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            run()
        except SpecError:
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check(path: Path) -> None:
    compile_spec(load_spec(path))


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    print("explicit stages | bytes | check ms | ms per stage")
    for count in (1, 2, 4, 8, 16, 32, 64):
        path = folder / f"stages{count}.yaml"
        path.write_text(HEAD + "stages:\n" + "  - {depth: 1, width: 8, stride: 1}\n" * count)
        seconds = timed(lambda p=path: check(p))
        print(f"{count:>15} | {path.stat().st_size:>5} | {seconds * 1e3:8.1f} | "
              f"{seconds * 1e3 / count:.2f}")
    print("\nfile bytes | parse ms | us per KiB")
    for kib in (1, 4, 16, 32, 63):
        path = folder / f"bytes{kib}.yaml"
        body = HEAD + "stages: [1, 1]\n"
        padding = "# " + "x" * 60 + "\n"
        path.write_text(body + padding * ((kib * 1024 - len(body)) // len(padding)))
        seconds = timed(lambda p=path: load_spec(p))
        print(f"{path.stat().st_size:>10} | {seconds * 1e3:8.2f} | "
              f"{seconds * 1e6 / (path.stat().st_size / 1024):.0f}")
    print("\nblocks | budget ms | compile ms | ms per block")
    for depth in (10, 100, 500, 1000, 2000):
        path = folder / f"blocks{depth}.yaml"
        path.write_text(HEAD + f"block: {{type: basic}}\nstages: [{{depth: {depth}, width: 4}}]\n")
        spec = load_spec(path)
        budget = timed(lambda s=spec: estimate(s))
        seconds = timed(lambda s=spec: compile_spec(s), repeat=1)
        print(f"{depth:>6} | {budget * 1e3:9.1f} | {seconds * 1e3:10.0f} | "
              f"{seconds * 1e3 / depth:.2f}")
    print("\nrefusal | ms")
    cases = {
        "stage depth 20,000": HEAD + "stages: [3, 4, 20000, 3]\n",
        "5,000 blocks over 2 stages": HEAD + "stages: [10, 4990]\n",
        "alias bomb (10**11 nodes)": "name: x\nstages: [1]\n" + "\n".join(
            ["a0: &a0 [x]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
                               for i in range(1, 12)]),
        "10,000 explicit stages (330 KB)": HEAD + "stages:\n" + "  - {depth: 1, width: 8}\n"
        * 10000,
        "60000x60000 input": "name: x\ninput: {height: 60000, width: 60000}\nstages: [1]\n",
    }
    for name, text in cases.items():
        path = folder / "refused.yaml"
        path.write_text(text)
        print(f"{name} | {timed(lambda p=path: check(p)) * 1e3:.1f}")


if __name__ == "__main__":
    main()
