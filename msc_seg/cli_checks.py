"""The command line's own checks, before anything heavy is imported or anything is written.

A user's mistake on the command line (a missing config file, an unknown field, a value of the
wrong type, a workdir that is a file or read-only) ends in one line naming it and exit code 2,
never in a traceback:

    config_argv(argv)      --config=W/config.json, or eval/predict with --workdir alone, read the
                           run's saved config (saved_config.py) instead of failing
    explain_flag_error()   absl / ml_collections parse errors (a chained AttributeError for an
                           unknown field, a nested traceback for a bad `:arg`) -> one sentence
    check_workdir()        the workdir of a mode, checked without writing to it
"""

from __future__ import annotations

import os
import pathlib

from msc_seg.errors import ArgumentError

SAVED_CONFIG_LOADER = str(pathlib.Path(__file__).with_name("saved_config.py"))


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name=V` or `--name V` in argv (the last one wins, as in absl)."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _set_flag(argv: list[str], name: str, value: str) -> list[str]:
    """argv with every --name[=V| V] replaced by one --name=value."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith(f"--{name}="):
            continue
        if arg == f"--{name}" and i + 1 < len(argv):
            skip = True
            continue
        out.append(arg)
    return [out[0], f"--{name}={value}", *out[1:]]


def _run_config_of_checkpoint(checkpoint: str) -> pathlib.Path | None:
    """WORKDIR/config.json of --checkpoint=PATH (a workdir, its checkpoints/ or a step folder)."""
    path = pathlib.Path(checkpoint)
    for folder in (path, *list(path.parents)[:3]):
        if (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def config_argv(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv for absl, the saved config.json read or None).

    `--config=FILE.json` -> `--config=saved_config.py:FILE.json`. eval / predict without
    --config read WORKDIR/config.json (or the config.json of --checkpoint=PATH's workdir).
    """
    config = flag_value(argv, "config")
    if config is not None:
        if config.split(":", 1)[0].endswith(".json"):
            return _set_flag(argv, "config", f"{SAVED_CONFIG_LOADER}:{config}"), config
        return argv, None
    mode = flag_value(argv, "mode")
    if mode not in ("eval", "predict"):
        return argv, None
    workdir = flag_value(argv, "workdir")
    checkpoint = flag_value(argv, "checkpoint")
    if workdir:
        saved = pathlib.Path(workdir) / "config.json"
    elif checkpoint:
        saved = _run_config_of_checkpoint(checkpoint)
    else:
        return argv, None
    if saved is None or not saved.is_file():
        return argv, None  # main says what is missing (a workdir or its config.json)
    return _set_flag(argv, "config", f"{SAVED_CONFIG_LOADER}:{saved}"), str(saved)


def _config_spec(argv: list[str]) -> tuple[str, str | None] | None:
    config = flag_value(argv, "config")
    if config is None:
        return None
    path, _, arg = config.partition(":")
    return path, (arg or None)


def _load_config_file(path: str, arg: str | None):
    """Loads a Python config file the way config_flags does (get_config([arg]))."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("msc_seg_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def explain_flag_error(argv: list[str], error: Exception) -> str:
    """One sentence naming the flag, file or field behind a flag-parsing error."""
    spec = _config_spec(argv)
    shown = flag_value(argv, "config")
    if spec is not None:
        path, arg = spec
        if path == SAVED_CONFIG_LOADER and arg:
            path, arg, shown = arg, None, arg
        if not pathlib.Path(path).is_file():
            return f"--config={shown}: no such file; pass a config such as configs/demo.py"
        try:
            if path.endswith(".json"):
                from msc_seg import saved_config

                config = saved_config.get_config(path)
            else:
                config = _load_config_file(path, arg)
        except Exception as e:  # noqa: BLE001 - the user's file: name it, with its error
            return f"--config={shown}: {type(e).__name__}: {e}"
        from msc_seg import config_lib

        flat = config_lib._flat(config.to_dict())
        for a in argv[1:]:
            if a.startswith("--config.") and "=" in a:
                field = a[len("--config.") : a.index("=")]
                if field not in flat and not any(k.startswith(field + ".") for k in flat):
                    return (
                        f"--config.{field}: the config has no field `{field}` (a typo?); "
                        "docs/CONFIGS.md lists every field"
                    )
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return first.removeprefix("FATAL Flags parsing error: ").removeprefix("flag ")


def check_workdir(workdir: str, mode: str) -> None:
    """ArgumentError("--workdir", ...) when `workdir` cannot serve `mode`, found without writing.

    train creates the workdir (a file in the way, a read-only parent are refused); eval needs an
    existing, writable workdir (it writes eval_<step>.json); predict only reads it.
    """
    path = pathlib.Path(workdir)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"is under the file {parent}"
            raise ArgumentError("--workdir", workdir, f"{where}; pass a folder")
    if mode in ("eval", "predict") and not path.is_dir():
        raise ArgumentError("--workdir", workdir, "does not exist; train first or fix --workdir")
    if mode == "predict":
        return
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        what = (
            "is read-only" if existing == path else f"cannot be created ({existing} is read-only)"
        )
        todo = (
            "copy the run to a writable folder to evaluate it (eval writes eval_<step>.json)"
            if mode == "eval"
            else "pass a writable folder"
        )
        raise ArgumentError("--workdir", workdir, f"{what}; {todo}")
