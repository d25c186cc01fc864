"""`--config FILE.yaml`: a command's option values read from a file, as click's `default_map`.

A key is an option's long name without the dashes (`img-size` or `img_size`); a value is read as the command line
would read it (YAML's base schema: every scalar is text, so `amp: off` is the word off and `lr: 3e-4` a number once
the option converts it), a list only for a repeatable option. Arguments and outputs stay on the command line: they
say what a command reads and writes, which make and the run directory depend on. Each value is checked here, so a
bad one is reported with the file and key; the command line still overrides any of them.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

from kcomp.commands._cli import CONFIG_META
from kcomp.errors import BadInput


def default_map(ctx: Any, path: str) -> dict[str, Any]:
    """{parameter name: value as text} for every key of the YAML mapping at `path`."""
    keys = _keys(ctx.command)
    out: dict[str, Any] = {}
    for key, value in _read(path).items():
        param = _param(ctx, keys, path, str(key))
        if param.name in out:  # img_size and img-size
            raise BadInput(f"{key}: {param.opts[-1]} is set twice in the file", path=path)
        out[param.name] = _value(ctx, param, path, str(key), value)
    ctx.meta[CONFIG_META] = out  # for `record`, once the command line is parsed
    return out


def record(ctx: Any, given: list[str]) -> None:
    """Once the command line is parsed: `sys.argv` becomes the same command with the file's options (those the
    command line did not set) written out in place of `--config FILE`, so the command an artifact records, and
    `pack` replays, is complete without the file, and a torchrun relaunch re-reads nothing. Only when this process
    was started with these arguments (not when a test calls the app in-process)."""
    values = ctx.meta.get(CONFIG_META)
    start = len(sys.argv) - len(given)
    if values is None or start < 1 or sys.argv[start:] != given:
        return
    params = {p.name: p for p in ctx.command.params}
    flags = [token for name, raw in values.items() if ctx.get_parameter_source(name).name == "DEFAULT_MAP"
             for token in _tokens(params[name], raw, ctx.params.get(name))]
    sys.argv[start:] = _replace_config(given, flags)


def _tokens(param: Any, raw: Any, value: Any) -> list[str]:
    """How the command line would give `param` this value."""
    opt = next(o for o in reversed(param.opts) if o.startswith("--"))
    if getattr(param, "is_flag", False):
        return [opt] if value else list(param.secondary_opts[:1])
    return [t for v in (raw if isinstance(raw, list) else [raw]) for t in (opt, v)]


def _replace_config(args: list[str], flags: list[str]) -> list[str]:
    """`args` with every `--config FILE` / `--config=FILE` dropped and `flags` where the last one was."""
    out: list[str] = []
    at, i = 0, 0
    while i < len(args):
        if args[i] == "--config" or args[i].startswith("--config="):
            at, i = len(out), i + (2 if args[i] == "--config" else 1)
        else:
            out.append(args[i])
            i += 1
    return [*out[:at], *flags, *out[at:]]


def _read(path: str) -> dict[Any, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first key
            data = yaml.load(f, Loader=yaml.BaseLoader)
    except OSError as e:
        raise BadInput(f"cannot read the --config file: {e.strerror or e}", path=path) from None
    except UnicodeDecodeError:
        raise BadInput("the --config file is not UTF-8 text", path=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadInput(f"not valid YAML{where}: {getattr(e, 'problem', None) or e}", path=path) from None
    if data is None:  # empty, or comments only
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"a --config file is a mapping of `option: value` lines, not a {type(data).__name__}",
                       path=path)
    return data


def _keys(command: Any) -> dict[str, Any]:
    """Every name a key may use: each option's names without the dashes (`o` too, to refuse it), and each
    argument's name (to refuse it)."""
    keys = {}
    for param in command.params:
        for name in param.opts if param.param_type_name == "option" else [param.name]:
            keys[name.lstrip("-").replace("_", "-")] = param
    return keys


def _param(ctx: Any, keys: dict[str, Any], path: str, key: str) -> Any:
    command = f"kcomp {ctx.info_name}"
    param = keys.get(key.replace("_", "-"))
    if param is None:
        raise BadInput(f"{key}: not an option of {command} ({_closest(key, keys)})", path=path)
    if param.name == "config":
        raise BadInput(f"{key}: a --config file cannot name another one (give --config on the command line)",
                       path=path)
    if param.param_type_name == "argument":
        raise BadInput(f"{key}: {param.name.upper()} is an argument of {command}: arguments stay on the "
                       "command line", path=path)
    if _is_output(param):
        raise BadInput(f"{key}: where {command} writes ({'/'.join(param.opts)}) stays on the command line",
                       path=path)
    return param


def _closest(key: str, keys: dict[str, Any]) -> str:
    options = sorted(k for k, p in keys.items() if p.param_type_name == "option" and len(k) > 1
                     and p.name != "config" and not _is_output(p))
    near = difflib.get_close_matches(key.replace("_", "-"), options, n=1)
    return f"did you mean {near[0]}?" if near else f"its options: {', '.join(options)}"


def _is_output(param: Any) -> bool:
    return param.name == "output" or param.name.endswith("_output")  # -o, stack's --oof-output


def _value(ctx: Any, param: Any, path: str, key: str, value: Any) -> Any:
    """The value as the command line would give it (a list for a repeatable option), checked by the option's own
    conversion so that its message, naming the file and key, is the one a wrong flag would print."""
    repeatable = bool(getattr(param, "multiple", False)) or param.nargs != 1
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not repeatable:
        raise BadInput(f"{key}: {param.opts[-1]} takes one value, not a list", path=path)
    if not all(isinstance(v, str) for v in values):
        raise BadInput(f"{key}: give a value or a list of values, not a mapping or nested lists", path=path)
    raw = values if repeatable else values[0]
    try:
        param.process_value(ctx, raw)
    except Exception as e:
        if not hasattr(e, "format_message"):  # click's BadParameter: the conversion failed
            raise
        raise BadInput(f"{key}: {value!r}: invalid value for {param.opts[-1]}: {e.message}", path=path) from None
    return raw
