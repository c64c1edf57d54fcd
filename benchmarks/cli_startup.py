"""Whole-process wall time and peak RSS of `inspect` and `check` (issue: compiler core).

Targets: under 0.5 s and 100 MB each. Also lists the slowest imports at start-up
(`python -X importtime`). Run by hand:  python benchmarks/cli_startup.py
"""

from __future__ import annotations

import glob
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "resnext-compile")


def measure(args: list[str], repeat: int = 7) -> tuple[float, float]:
    """Median wall seconds and max peak RSS (MB) over `repeat` runs."""
    walls, rss = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        rss.append(usage.ru_maxrss / 1024)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{args} failed")
    return statistics.median(walls), max(rss)


def slowest_imports(args: list[str], top: int = 12) -> list[tuple[int, str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import sys; from resnext_compiler.cli import main; "
                           f"sys.argv={['resnext-compile', *args]!r}; main()"],
                          capture_output=True, text=True, cwd=REPO)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (p.strip() for p in line[len("import time:"):].split("|"))
            if cumulative.isdigit() and name.count(" ") == 0:  # top-level imports only
                rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    specs = sorted(glob.glob(str(REPO / "specs" / "*.yaml")))
    cases = {
        "inspect specs/resnext101_64x4d.yaml": [EXE, "inspect", "specs/resnext101_64x4d.yaml"],
        f"check specs/*.yaml ({len(specs)} specs)": [EXE, "check", *specs],
        "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
    }
    print("| command | wall (median of 7) | peak RSS |")
    print("|---|---|---|")
    for label, args in cases.items():
        wall, rss = measure(args)
        print(f"| `{label}` | {wall:.3f} s | {rss:.0f} MB |")
    print("\nSlowest top-level imports of `inspect` (cumulative us):")
    for micros, name in slowest_imports(["inspect", "specs/resnext101_64x4d.yaml"]):
        print(f"- {name}: {micros / 1000:.1f} ms")


if __name__ == "__main__":
    main()
