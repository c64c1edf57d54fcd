"""The hostile-input corpus, surface by surface: how many cases, and the most time and memory
any case took.

    python benchmarks/hostile_corpus.py [-n 2]

Runs tests/test_hostile_*.py with HOSTILE_MEASUREMENTS set, so every bounded call of the
corpus (tests/hostile_inputs.py: in-process refusals, CLI children, the serve process) records
its peak memory, and reads each case's wall time (setup included: an upper bound) from pytest's
JUnit report. Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    files = sorted((ROOT / "tests").glob("test_hostile_*.py"))
    with tempfile.TemporaryDirectory() as work:
        measurements = Path(work) / "measurements.jsonl"
        junit = Path(work) / "junit.xml"
        env = {**os.environ, "HOSTILE_MEASUREMENTS": str(measurements)}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                              f"--junitxml={junit}", *argv, *map(str, files)], cwd=ROOT,
                             env=env, check=False)
        cases: dict[str, int] = collections.Counter()
        slowest: dict[str, tuple[float, str]] = {}
        for case in ElementTree.parse(junit).iter("testcase"):
            surface = case.get("classname", "").rsplit(".", 1)[-1]
            cases[surface] += 1
            seconds = float(case.get("time", 0))
            if seconds > slowest.get(surface, (-1.0, ""))[0]:
                slowest[surface] = (seconds, case.get("name", ""))
        largest: dict[str, tuple[int, str, str]] = {}
        lines = measurements.read_text().splitlines() if measurements.exists() else []
        for line in lines:
            entry = json.loads(line)
            surface = Path(entry["case"].split("::")[0]).stem
            if entry["bytes"] > largest.get(surface, (-1, "", ""))[0]:
                largest[surface] = (entry["bytes"], entry["case"].split("::")[-1], entry["how"])
    print("| surface | cases | slowest case (s, setup included) | largest memory (MiB) |")
    print("|---|---:|---|---|")
    for surface in sorted(cases):
        seconds, slow = slowest[surface]
        peak, big, how = largest.get(surface, (0, "-", "-"))
        print(f"| {surface} | {cases[surface]} | {seconds:.1f} `{slow}` | "
              f"{peak / 2**20:.0f} `{big}` ({how}) |")
    print(f"| all | {sum(cases.values())} | | |")
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
