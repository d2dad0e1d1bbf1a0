"""A run's saved config (WORKDIR/config.json) as a config file: the workdir is the run.

    python -m msc_seg.main --mode=eval --workdir=W            # main.py loads W/config.json here
    python -m msc_seg.main --config=W/config.json ...         # the same, named explicitly

config_flags loads Python config files only (a JSON file fails with `NameError: name 'true' is
not defined`), so main.py rewrites such a --config to `--config=<this file>:W/config.json`:
`get_config` reads the JSON (renamed fields moved to their new names, lists back to the tuples
the schema uses) and `--config.*` overrides then apply on top of it as usual.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

# Imported by path by config_flags (not as msc_seg.saved_config): keep the imports absolute.
from msc_seg import config_lib
from msc_seg.errors import ConfigError


def _tuples(value):
    """JSON lists -> tuples (the schema's sequences), dicts -> ConfigDicts, recursively."""
    if isinstance(value, dict):
        return ml_collections.ConfigDict({k: _tuples(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def read(path: str | pathlib.Path) -> dict:
    """The saved config as a dict with renamed fields at their new names; ConfigError naming
    the file when it is missing or not JSON."""
    path = pathlib.Path(path)
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; pass --config=configs/NAME.py") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path} is not a JSON config ({e}); pass --config=configs/NAME.py"
        ) from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is not a JSON config (not an object)")
    return config_lib.upgraded_dict(saved)


def get_config(arg: str) -> ml_collections.ConfigDict:
    """The config-file entry point: `arg` is the path of a saved config.json."""
    return _tuples(read(arg))


def differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """'field: saved -> now' for every field `config` (saved + overrides) changes."""
    a, b = config_lib._flat(saved), config_lib._flat(config_lib.to_dict(config))
    out = []
    for field in sorted(set(a) | set(b)):
        if json.dumps(a.get(field), default=str) != json.dumps(b.get(field), default=str):
            out.append(f"{field}: {a.get(field)!r} -> {b.get(field)!r}")
    return out
