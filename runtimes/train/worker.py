"""Entry point of each torchrun worker: `python -m resnext_compiler.runtimes.train.worker
RUN/train.json [--resume]`. Errors are printed once (by rank 0) without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from resnext_compiler.errors import ResnextError, UserError, error_text


def main(argv: list[str] | None = None) -> int:
    from resnext_compiler.runtimes.train.config import TrainConfig
    from resnext_compiler.runtimes.train.distributed import context_from_env, shutdown
    from resnext_compiler.runtimes.train.loop import train_process

    args = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in args
    config = TrainConfig.from_json(Path(args[0]).read_text())
    context = context_from_env(config.device)
    try:
        train_process(config, context, resume)
    except ResnextError as exc:
        if context.is_main:
            print(error_text(exc), file=sys.stderr, flush=True)
        return 2 if isinstance(exc, UserError) else 1
    finally:
        shutdown(context)
    # An interrupted run saved its state; the launching process reports it from the run dir.
    return 0


if __name__ == "__main__":
    sys.exit(main())
