"""What every command shares: global flags, one-line errors with exit codes, stdout for data, `--json`."""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Annotated, Any

import typer

STATE: dict[str, bool] = {"debug": False, "quiet": False}

Output = Annotated[str, typer.Option("-o", "--output", help="Where to write ('-' = stdout for tables).")]
Json = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
DEVICES = "Devices and distributed"  # the --help panel of how a command runs, not what it computes (commands/_cli.py)
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N", rich_help_panel=DEVICES)]
Workers = Annotated[int | None, typer.Option(help="DataLoader worker processes. Default: 2 on a CPU (inference and "
                                                   "validation there: at most the cores torch's threads leave "
                                                   "free); on a GPU the cores per GPU, up to 8.",
                                             rich_help_panel=DEVICES)]


def emit(written: list[str] | str, summary: dict[str, Any] | None = None, as_json: bool = False) -> None:
    """stdout carries only data: the paths written, or the JSON summary with them."""
    written = [written] if isinstance(written, str) else written
    if as_json:
        from kcomp.artifacts.jsonfile import dumps

        sys.stdout.write(dumps({"written": written, **(summary or {})}, default=str) + "\n")
    else:
        for w in written:
            if w != "-":
                sys.stdout.write(f"{w}\n")
    sys.stdout.flush()


def log(message: str) -> None:
    if not STATE["quiet"]:
        from kcomp import console

        console.log(message)


def set_global(debug: bool, quiet: bool) -> None:
    STATE.update(debug=debug, quiet=quiet)
    if quiet:
        from kcomp import console

        console.set_quiet(True)


def run_app(app: typer.Typer, args: list[str] | None = None) -> None:
    """Entry point: library errors become one stderr line and an exit code; tracebacks only with --debug. Click's
    own usage errors (unknown option, a value that is not a number) too: one line, exit 2, no usage block."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `kcomp ... | head` ends quietly
    from kcomp.errors import Interrupted, KcompError

    try:
        code = app(args=args, standalone_mode=False)
    except KcompError as e:
        _fail(e, e.exit_code)
    except Interrupted as e:
        _fail(e, 130, prefix="interrupted")
    except KeyboardInterrupt:
        _fail(None, 130, prefix="interrupted")
    except OSError as e:  # the machine, not a bug: a device error, a full or read-only disk, a lost mount
        _fail(e, 1)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if _is_click_error(e):
            _usage_error(e, sys.argv[1:] if args is None else args)
        _record_internal_error(e)
        _fail(e, 1, prefix=f"internal error ({type(e).__name__})")
    if isinstance(code, int) and not isinstance(code, bool) and code:
        raise SystemExit(code)  # click's own exits (--help, --version) return their code without standalone mode


def _is_click_error(e: BaseException) -> bool:
    """click's ClickException, whichever copy of click typer uses (its own vendored one since 0.2x)."""
    return any(c.__name__ == "ClickException" for c in type(e).__mro__) and hasattr(e, "format_message")


def _usage_error(e: Any, argv: list[str]) -> None:
    if type(e).__name__ == "NoArgsIsHelpError":  # plain `kcomp`: the help text, as click shows it
        e.show()
        raise SystemExit(e.exit_code)
    names, ctx = [], getattr(e, "ctx", None)
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    text = e.format_message()
    opts = list(getattr(getattr(e, "param", None), "opts", None) or [])
    for i, arg in enumerate(argv):  # name the value as given: `--epochs abc: ...`
        for opt in opts:
            value = argv[i + 1] if arg == opt and i + 1 < len(argv) else arg[len(opt) + 1:] \
                if arg.startswith(opt + "=") else None
            if value is not None:
                text = f"{opt} {value}: {e.message}"
    where = " ".join(["kcomp", *reversed(names)])
    sys.stderr.write(f"kcomp: error: {' '.join(text.split())} (see '{where} --help')\n")
    raise SystemExit(e.exit_code)


INTERNAL_ERROR_LOG = "KCOMP_INTERNAL_ERROR_LOG"


def _record_internal_error(e: BaseException) -> None:
    """"internal error" means a bug. With $KCOMP_INTERNAL_ERROR_LOG set (the test suite sets it for every kcomp it
    starts, Makefiles and torchrun included), each one also appends a line there, so a test fails whichever way
    it ran kcomp."""
    import os

    log = os.environ.get(INTERNAL_ERROR_LOG)
    if log:
        with open(log, "a") as f:
            f.write(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
                    f"(kcomp {' '.join(sys.argv[1:])})\n")


def _fail(e: BaseException | None, code: int, prefix: str = "error") -> None:
    from kcomp.errors import KcompError, one_line

    if STATE["debug"] and e is not None:
        traceback.print_exception(e, file=sys.stderr)
    text = str(e).strip() if e is not None else ""
    # a user error is one whole line, a path with a newline included; an unexpected one shows its first line
    text = one_line(text) if isinstance(e, (KcompError, OSError)) else (text.splitlines() or [""])[0]
    sys.stderr.write(f"kcomp: {prefix}: {text}\n" if text else f"kcomp: {prefix}\n")
    if prefix.startswith("internal error") and not STATE["debug"]:  # a KcompError's line says all there is
        sys.stderr.write("kcomp: re-run with --debug for the traceback\n")
    raise SystemExit(code)
