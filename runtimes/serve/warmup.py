"""A warm-up run that cannot take the server down: a child process with an address-space limit.

`onnx_cost` knows the memory of every node whose output size follows from the graph. A model
with data-dependent sizes (NonZero, a Range over computed bounds, a Resize by computed scales)
can only be measured by running it, so that run happens here first: a fresh Python process,
`RLIMIT_AS` set to the memory budget plus the interpreter's own share, one zero batch at the
size the server will use. An allocation over the limit fails inside the child (onnxruntime
raises, or the child dies) and the parent refuses the model; the parent's own address space
is never at stake. A child, not an allocator limit in-process, because onnxruntime's CPU
arena cap covers only arena allocations, not every kernel's scratch buffers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from resnext_compiler.errors import UserError
from resnext_compiler.limited_process import run_limited

# the interpreter, numpy and onnxruntime's libraries and thread stacks, mapped but mostly idle
BASE_ADDRESS_SPACE = 3 * 1024**3
TIMEOUT_S = 300.0
FAILED = 3  # the child's exit status when the run raised


def warm_up_in_child(path: Path, feeds: dict[str, tuple[list[int], str]], budget: int,
                     why: list[str]) -> None:
    """Run `path` once on zero inputs ({name: (shape, numpy dtype)}) in a child limited to
    `budget` bytes more than an idle interpreter; UserError when it fails or is killed."""
    limit = BASE_ADDRESS_SPACE + budget
    reason = (f"the size of {why[0]}" + (f" and {len(why) - 1} more" if len(why) > 1 else "")
              + " is known only when the model runs")
    outcome = run_limited("resnext_compiler.runtimes.serve.warmup",
                          [str(path), json.dumps(feeds)], limit, TIMEOUT_S)
    if not outcome.ok:
        raise UserError(f"{path}: {reason}; its warm-up in a child process limited to "
                        f"{limit:,} bytes of address space (the memory budget of {budget:,} "
                        f"plus the interpreter's) {outcome.what}")


def main(argv: list[str]) -> int:
    import numpy as np
    import onnxruntime as ort

    path, feeds = argv[0], json.loads(argv[1])
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the parent reports the outcome
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, {name: np.zeros(shape, dtype) for name, (shape, dtype)
                           in feeds.items()})
    except (MemoryError, Exception) as exc:  # any failure of the run is the model's
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}", file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
