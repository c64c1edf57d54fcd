"""Entry point of each torchrun worker: `python -m resnext_compiler.runtimes.train.worker
SETTINGS/train.json [--resume]`, where SETTINGS is the run directory or, in a multi-node run,
the node-local staging directory that global rank 0 publishes into the run directory.
Errors are printed once (by rank 0) without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from resnext_compiler.errors import ResnextError, UserError, error_text


def main(argv: list[str] | None = None) -> int:
    from resnext_compiler.named_files import RUN_SETTINGS, read_named_text
    from resnext_compiler.runtimes.train.config import TrainConfig
    from resnext_compiler.runtimes.train.distributed import context_from_env, shutdown
    from resnext_compiler.runtimes.train.loop import train_process
    from resnext_compiler.runtimes.train.runner import publish_staged_run

    args = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in args
    config_path = Path(args[0])
    config = TrainConfig.from_json(read_named_text(config_path, RUN_SETTINGS,
                                                   config_path.parent))
    context = context_from_env(config.device)
    settings = config_path.parent  # the run directory, or a multi-node run's staging copy
    try:
        if settings.resolve() != Path(config.run_dir).resolve():
            publish_staged_run(settings, config, context)
        train_process(config, context, resume, spec_path=settings / "spec.yaml")
    except ResnextError as exc:
        # a rank that disagrees with rank 0 says so itself; other errors are everyone's
        if context.is_main or "resolved different settings" in str(exc):
            print(error_text(exc), file=sys.stderr, flush=True)
        return 2 if isinstance(exc, UserError) else 1
    finally:
        shutdown(context)
    # An interrupted run saved its state; the launching process reports it from the run dir.
    return 0


if __name__ == "__main__":
    sys.exit(main())
