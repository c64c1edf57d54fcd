"""PyTorch's elastic launcher (`torchrun`), answering a worker's failure with its exit status.

torchrun reports a failed worker with its own traceback (`ChildFailedError`) and log line,
after the worker has already printed its located error once; and it exits 1 whatever the
worker's status, so a user error (exit 2) would read as a crash. Here the same launcher runs
with that failure turned into the first failed worker's exit status and nothing more.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
