"""What every command shares: global flags, one-line errors with exit codes, stdout for data, `--json`."""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

STATE: dict[str, bool] = {"debug": False, "quiet": False}

Output = Annotated[str, typer.Option("-o", "--output", help="Where to write ('-' = stdout for tables).")]
Json = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
Workers = Annotated[int | None, typer.Option(help="DataLoader worker processes. Default: 2 on a CPU (inference and "
                                                   "validation there: at most the cores torch's threads leave "
                                                   "free); on a GPU the cores per GPU, up to 8.")]


def emit(written: list[str] | str, summary: dict[str, Any] | None = None, as_json: bool = False) -> None:
    """stdout carries only data: the paths written, or the JSON summary with them."""
    written = [written] if isinstance(written, str) else written
    if as_json:
        sys.stdout.write(json.dumps({"written": written, **(summary or {})}, default=str) + "\n")
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
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if _is_click_error(e):
            _usage_error(e, sys.argv[1:] if args is None else args)
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


def _fail(e: BaseException | None, code: int, prefix: str = "error") -> None:
    if STATE["debug"] and e is not None:
        traceback.print_exception(e, file=sys.stderr)
    text = str(e).strip().splitlines()[0] if e is not None and str(e).strip() else ""
    sys.stderr.write(f"kcomp: {prefix}: {text}\n" if text else f"kcomp: {prefix}\n")
    if prefix.startswith("internal error") and not STATE["debug"]:  # a KcompError's line says all there is
        sys.stderr.write("kcomp: re-run with --debug for the traceback\n")
    raise SystemExit(code)


def not_an_input(output: str, *inputs: str | Path) -> None:
    """`-o` must not name a file the command reads: the output replaces it only after the input was read, but a
    failure half way (or a typo in a Makefile) would lose the input."""
    from kcomp.errors import BadUsage

    if output == "-":
        return
    if Path(output).is_dir():
        raise BadUsage(f"-o {output}: is a directory; give a file name")
    out = Path(output).resolve()
    for p in inputs:
        if str(p) != "-" and Path(p).resolve() == out:
            raise BadUsage(f"-o {output}: is also an input; write the output elsewhere")
