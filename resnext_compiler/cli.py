"""`resnext-compile`: the command-line interface (README.md, "Quick tour").

`resnext-compile SPEC [options]` compiles (no subcommand word needed); other commands are
registered from `resnext_compiler.commands`. Exit codes: 0 ok, 1 runtime failure, 2 user
error. Errors are printed without a traceback (set RESNEXT_DEBUG=1 to see one).
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from pathlib import Path

import typer
from typer._click.exceptions import ClickException, UsageError  # typer vendors click
from typer.core import TyperGroup
from typer.exceptions import Abort

from resnext_compiler import __version__
from resnext_compiler.commands import compile as compile_commands
from resnext_compiler.errors import ResnextError, UserError, error_text
from resnext_compiler.extras import from_import_error

EXIT_OK, EXIT_FAILURE, EXIT_USER_ERROR = 0, 1, 2


class _CompileByDefault(TyperGroup):
    """A group whose default command is `compile`: `resnext-compile SPEC ...` just works."""

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201 - click's signature
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            first = args[0]
            if not first.startswith("-") and not Path(first).exists() and not Path(first).suffix:
                close = difflib.get_close_matches(first, list(self.commands), n=1)
                if close:
                    raise UsageError(
                        f"no such command or spec file {first!r}; did you mean {close[0]!r}?", ctx
                    )
            args = ["compile", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_CompileByDefault,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Compile ResNeXt-family YAML specs to PyTorch, ONNX and Triton; train and serve them.\n\n"
        "Example: resnext-compile specs/resnext50_32x4d.yaml --backend onnx"
    ),
)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"resnext-compile {__version__}")
        raise typer.Exit(EXIT_OK)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(EXIT_OK)


compile_commands.register(app)

# Other command families register themselves here (each module has `register(app)`).
for _module_name in ("serve", "design", "import_weights", "train", "sweep"):
    __import__(f"resnext_compiler.commands.{_module_name}", fromlist=["register"]).register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and maps errors to exit codes."""
    try:
        code = app(args=argv, prog_name="resnext-compile", standalone_mode=False)
        if isinstance(code, int) and code != EXIT_OK:  # typer.Exit(code)
            sys.exit(code)
    except ClickException as exc:  # a bad option or argument: one line, exit 2
        where = exc.ctx.command_path if getattr(exc, "ctx", None) else "resnext-compile"
        _report(UserError(f"{exc.format_message()} (see {where} --help)"))
        sys.exit(exc.exit_code)
    except Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as exc:
        _report(exc)
        sys.exit(EXIT_USER_ERROR)
    except ResnextError as exc:
        _report(exc)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_FAILURE)
    except ImportError as exc:  # an optional module this install lacks: name the extra
        missing = from_import_error(exc)
        if missing is None:
            _internal_error(exc)
        _report(missing)
        sys.exit(EXIT_USER_ERROR)
    except (
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as exc:
        # A path the user gave cannot be read or written: their error, not a crash.
        target = f"cannot use {exc.filename}: " if exc.filename else ""
        _report(UserError(f"{target}{exc.strerror or exc}"))
        sys.exit(EXIT_USER_ERROR)
    except OSError as exc:  # disk full, I/O error: a runtime failure
        _report(ResnextError(f"{exc.strerror or exc}"
                             + (f": {exc.filename}" if exc.filename else "")))
        sys.exit(EXIT_FAILURE)
    except Exception as exc:  # a bug: say so plainly, without a wall of traceback
        _internal_error(exc)


def _internal_error(exc: Exception) -> None:
    if os.environ.get("RESNEXT_DEBUG"):
        traceback.print_exc()
    print(
        f"internal error: {type(exc).__name__}: {exc}\n"
        "(set RESNEXT_DEBUG=1 for a traceback and please report it)",
        file=sys.stderr,
    )
    sys.exit(EXIT_FAILURE)


def _report(exc: Exception) -> None:
    if os.environ.get("RESNEXT_DEBUG"):
        traceback.print_exc()
    print(error_text(exc), file=sys.stderr)


if __name__ == "__main__":
    main()
