"""Everything about a workdir's checkpoints: saving, finding, restoring, and the config check.

orbax writes the last K steps under `checkpoints/` and the best by val mIoU under `best/`. Saves
are asynchronous; restores go into the abstract state of the *current* run, so a run saved on
8 devices resumes on 1 (or the other way round) with the current shardings. `WORKDIR/config.json`
is the run's resolved config: a run whose structural settings differ is refused (train, eval and
predict all use `check_workdir_config`). `resolve_checkpoint` finds the folder that
`--checkpoint=latest|best|STEP|PATH` names without creating orbax managers.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Mapping

import jax
import orbax.checkpoint as ocp

from msc_seg import config_lib


class CheckpointError(FileNotFoundError):
    """A checkpoint that is not there or cannot be read; the message says what to do."""


class WorkdirMismatchError(RuntimeError):
    """The workdir holds checkpoints of a different (structurally incompatible) config."""


class Checkpointer:
    """Wraps two orbax CheckpointManagers (latest-K and best-by-mIoU)."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, async_save: bool = True):
        workdir = pathlib.Path(workdir).absolute()
        options = dict(enable_async_checkpointing=async_save, create=True)
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options),
        )
        self.best = ocp.CheckpointManager(
            workdir / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["mIoU"], best_mode="max", **options
            ),
        )
        self._best_file = workdir / "best" / "best.json"

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state) -> None:
        """Saves `state` as step `step` (no-op if that step is already saved)."""
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=ocp.args.StandardSave(state), force=True)

    def best_miou(self) -> float | None:
        if self._best_file.exists():
            return json.loads(self._best_file.read_text())["mIoU"]
        return None

    def save_if_best(self, step: int, state, miou: float) -> bool:
        """Saves under best/ when miou beats every earlier evaluation; returns whether it did."""
        best = self.best_miou()
        if best is not None and not miou > best:
            return False
        if step in self.best.all_steps():
            return False
        self.best.save(
            step, args=ocp.args.StandardSave(state), metrics={"mIoU": float(miou)}, force=True
        )
        self.best.wait_until_finished()
        self._best_file.write_text(json.dumps({"step": int(step), "mIoU": float(miou)}))
        return True

    def restore(self, abstract_state, step: int | None = None, *, best: bool = False):
        """Restores into `abstract_state` (ShapeDtypeStructs with shardings).

        step None = the latest (or, with best=True, the best) checkpoint.
        """
        mgr = self.best if best else self.latest
        if step is None:
            step = mgr.best_step() if best else mgr.latest_step()
        if step is None:
            where = "best/" if best else "checkpoints/"
            raise FileNotFoundError(f"no checkpoint under {mgr.directory} ({where}); train first")
        return mgr.restore(step, args=ocp.args.StandardRestore(abstract_state)), step

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


# ---------------------------------------------------------------------------------------------
# The workdir's config.


def _has_checkpoints(workdir: pathlib.Path) -> bool:
    return any(
        (workdir / d).is_dir() and any((workdir / d).iterdir()) for d in ("checkpoints", "best")
    )


def saved_config(workdir: str | pathlib.Path) -> dict | None:
    """WORKDIR/config.json as a dict (renamed fields moved to their new names), None if absent."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        return None
    return config_lib.upgraded_dict(json.loads(path.read_text()))


def _latest_item_dir(workdir: pathlib.Path) -> pathlib.Path | None:
    """The item folder of the newest saved step (checkpoints/, else best/), None if none."""
    for manager in ("checkpoints", "best"):
        step_dir = _latest_step_dir(workdir / manager)
        if step_dir is not None:
            return _item_dir(step_dir)
    return None


def saved_tree(item_dir: pathlib.Path) -> dict[str, tuple[int, ...]]:
    """'params/decode_head/.../kernel' -> global shape of every array of a saved checkpoint, read
    from orbax's metadata (no array is read)."""
    from absl import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns about the step's own metadata file
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(item_dir.absolute())
    finally:
        logging.set_verbosity(verbosity)
    tree = getattr(metadata, "item_metadata", metadata)
    return {
        "/".join(map(str, k)): tuple(getattr(v, "shape", ()) or ())
        for k, v in ocp.tree.to_flat_dict(tree).items()
    }


def state_tree(abstract_state) -> dict[str, tuple[int, ...]]:
    """The same paths and shapes for the abstract state a config builds."""
    return {
        "/".join(map(str, k)): tuple(getattr(v, "shape", ()) or ())
        for k, v in ocp.tree.to_flat_dict(abstract_state).items()
    }


def _summary(paths, modules: set[str], limit: int = 6) -> str:
    """The distinct modules of `paths`: 'params/projectors', 'opt_state/.../projectors' (the
    optimizer's moments of those parameters) or, for optimizer state that mirrors no module
    (a clipping stage added or removed), its first three components."""
    heads = set()
    for path in paths:
        parts = path.split("/")
        if parts[0] in ("params", "batch_stats"):
            heads.add("/".join(parts[:2]))
            continue
        inner = next((i for i, part in enumerate(parts[1:], 1) if part in modules), None)
        heads.add("/".join(parts[:3]) if inner is None else f"{parts[0]}/.../{parts[inner]}")
    heads = sorted(heads)
    more = f" (+{len(heads) - limit} more)" if len(heads) > limit else ""
    return ", ".join(heads[:limit]) + more


def tree_differences(saved: Mapping, current: Mapping) -> list[str]:
    """How the checkpoint's tree (`saved_tree`) differs from the state of this config."""
    out = []
    modules = {k.split("/")[1] for k in (*saved, *current) if k.startswith("params/")}
    only_saved = [k for k in saved if k not in current]
    only_now = [k for k in current if k not in saved]
    reshaped = [k for k in saved if k in current and tuple(saved[k]) != tuple(current[k])]
    if only_saved:
        out.append(f"only in the checkpoint: {_summary(only_saved, modules)}")
    if only_now:
        out.append(f"missing from the checkpoint: {_summary(only_now, modules)}")
    if reshaped:
        k = reshaped[0]
        out.append(
            f"other shapes: {_summary(reshaped, modules)} (e.g. {k}: {tuple(saved[k])} in the "
            f"checkpoint, {tuple(current[k])} now)"
        )
    return out


def check_workdir_config(
    workdir: str | pathlib.Path, config: Mapping, *, what: str, abstract_state=None
) -> None:
    """WorkdirMismatchError when `workdir` holds checkpoints of a structurally different config.

    config: the current config as a dict; what: the culprit to name ("--config", "this config");
    abstract_state: the state this config builds, compared with the newest checkpoint's own
    tree (paths and shapes from orbax's metadata), so that a change no config field is known to
    make is refused too. Reads only; nothing in the workdir is written.
    """
    workdir = pathlib.Path(workdir)
    saved = saved_config(workdir)
    if saved is None:
        if _has_checkpoints(workdir):
            raise WorkdirMismatchError(
                f"workdir {workdir} has checkpoints but no config.json, so it cannot be checked "
                f"against {what}; use a new --workdir"
            )
        return
    if not _has_checkpoints(workdir):
        return
    diffs = config_lib.structural_differences(saved, dict(config))
    tree_diffs = []
    item = _latest_item_dir(workdir) if abstract_state is not None else None
    if item is not None and (item / "_METADATA").exists():
        tree_diffs = tree_differences(saved_tree(item), state_tree(abstract_state))
    if not diffs and not tree_diffs:
        return
    if tree_diffs and not diffs:  # no known structural field explains it: name every change
        diffs = config_lib.field_differences(saved, dict(config)) or ["no config field differs"]
    where = f"; its checkpoint {item} differs: {'; '.join(tree_diffs)}" if tree_diffs else ""
    raise WorkdirMismatchError(
        f"workdir {workdir} holds checkpoints of another config ({'; '.join(diffs)}){where}. "
        f"Pass the config the run was trained with (--mode=eval/predict read "
        "WORKDIR/config.json when --config is left out), use a new --workdir, or move its "
        "checkpoints/ and best/ away to start over."
    )


def write_workdir_config(workdir: str | pathlib.Path, config_json: str) -> None:
    """Writes the resolved config as WORKDIR/config.json (process 0); a previous, different
    config.json is kept as config.<time>.json (never lost)."""
    workdir = pathlib.Path(workdir)
    path = workdir / "config.json"
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if json.loads(path.read_text()) == json.loads(config_json):
            return
        path.rename(workdir / f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.write_text(config_json)


# ---------------------------------------------------------------------------------------------
# Finding a checkpoint (eval and predict), without orbax managers.

_TRAIN_FIRST = (
    "train first (python -m msc_seg.main --config=... --workdir=...) or pass "
    "--checkpoint=/path/to/WORKDIR/checkpoints/STEP"
)


def _is_step_name(name: str) -> bool:
    return name.isdigit()


def _latest_step_dir(manager_dir: pathlib.Path) -> pathlib.Path | None:
    """The highest committed step folder of an orbax manager folder (checkpoints/ or best/)."""
    if not manager_dir.is_dir():
        return None
    steps = [p for p in manager_dir.iterdir() if p.is_dir() and _is_step_name(p.name)]
    return max(steps, key=lambda p: int(p.name)) if steps else None


def latest_saved_step(workdir: pathlib.Path) -> int | None:
    """The newest committed step under WORKDIR/checkpoints/, without orbax managers."""
    step_dir = _latest_step_dir(pathlib.Path(workdir) / "checkpoints")
    return int(step_dir.name) if step_dir is not None else None


def _item_dir(step_dir: pathlib.Path) -> pathlib.Path:
    """The folder orbax restores from: STEP/default (what CheckpointManager writes) or STEP."""
    return step_dir / "default" if (step_dir / "default").is_dir() else step_dir


def _step_dir_in_workdir(workdir: str, checkpoint: str) -> pathlib.Path:
    """The step folder of --checkpoint=latest|best|STEP in --workdir."""
    root = pathlib.Path(workdir)
    if not root.is_dir():
        raise CheckpointError(f"--workdir={workdir} does not exist; {_TRAIN_FIRST}")
    if checkpoint == "best":
        best = root / "best" / "best.json"
        step_dir = (
            root / "best" / str(json.loads(best.read_text())["step"]) if best.exists() else None
        )
        if step_dir is None or not step_dir.is_dir():
            raise CheckpointError(
                f"--workdir={workdir} has no best checkpoint under best/ (written by an "
                "evaluation during training); use --checkpoint=latest or a step number"
            )
        return step_dir
    if checkpoint == "latest":
        step_dir = _latest_step_dir(root / "checkpoints")
        if step_dir is None:
            raise CheckpointError(
                f"--workdir={workdir} has no checkpoint under checkpoints/; {_TRAIN_FIRST}"
            )
        return step_dir
    step_dir = root / "checkpoints" / checkpoint
    if not step_dir.is_dir():
        saved = sorted(
            int(p.name) for p in (root / "checkpoints").glob("*") if _is_step_name(p.name)
        )
        raise CheckpointError(
            f"--workdir={workdir} has no checkpoint of step {checkpoint} under checkpoints/ "
            f"(saved steps: {saved or 'none'}); pass one of them, 'latest' or 'best'"
        )
    return step_dir


def _step_dir_at_path(checkpoint: str) -> pathlib.Path:
    """The step folder of --checkpoint=PATH: a step folder, a checkpoints/ folder, a workdir."""
    path = pathlib.Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"--checkpoint={checkpoint} does not exist; {_TRAIN_FIRST}")
    if (path / "checkpoints").is_dir():  # a workdir
        path = path / "checkpoints"
    latest = _latest_step_dir(path)
    if latest is not None and not (path / "_CHECKPOINT_METADATA").exists():
        path = latest  # a manager folder: its latest step
    return path


def is_checkpoint_path(checkpoint: str) -> bool:
    """Whether --checkpoint names a path (not latest / best / a step number)."""
    return checkpoint not in ("latest", "best") and not _is_step_name(checkpoint)


def resolve_checkpoint(workdir: str | None, checkpoint: str) -> pathlib.Path:
    """The orbax item folder named by --checkpoint (latest|best|STEP within --workdir, or a path
    to a step folder, a checkpoints/ folder or a workdir); CheckpointError saying what to do."""
    if not is_checkpoint_path(checkpoint):
        if not workdir:
            raise CheckpointError(
                f"--checkpoint={checkpoint} needs --workdir (or a checkpoint path)"
            )
        return _item_dir(_step_dir_in_workdir(workdir, checkpoint))
    item = _item_dir(_step_dir_at_path(checkpoint))
    if not (item / "_METADATA").exists():
        raise CheckpointError(
            f"--checkpoint={checkpoint} is not an orbax checkpoint (no _METADATA in {item}); "
            "pass WORKDIR/checkpoints/STEP, WORKDIR/best/STEP or a workdir"
        )
    return item


def workdir_of(item_dir: pathlib.Path) -> pathlib.Path:
    """WORKDIR of an item folder WORKDIR/{checkpoints,best}/STEP[/default]."""
    step_dir = item_dir.parent if item_dir.name == "default" else item_dir
    return step_dir.parent.parent


def step_of(item_dir: pathlib.Path) -> int | None:
    step_dir = item_dir.parent if item_dir.name == "default" else item_dir
    return int(step_dir.name) if _is_step_name(step_dir.name) else None


def restore_item(item_dir: pathlib.Path, abstract_state):
    """The state of an orbax item folder, restored into `abstract_state` (current shardings);
    CheckpointError naming the folder when it does not fit."""
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(item_dir.absolute(), abstract_state)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(
            f"cannot restore {item_dir} into the model of this config ({type(e).__name__}: "
            f"{e}); pass the config the checkpoint was trained with"
        ) from None
