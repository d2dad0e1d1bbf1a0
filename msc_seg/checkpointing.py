"""Everything about a workdir's checkpoints: saving, finding, restoring, and the config check.

orbax writes the last K steps under `checkpoints/` and the best by val mIoU under `best/`. Saves
are asynchronous; restores go into the abstract state of the *current* run, so a run saved on
8 devices resumes on 1 (or the other way round) with the current shardings. `WORKDIR/config.json`
is the run's resolved config: a run whose structural settings differ is refused (train, eval and
predict all use `check_workdir_config`). `resolve_checkpoint` finds the folder that
`--checkpoint=latest|best|STEP|PATH` names without creating orbax managers.

A checkpoint cannot block a run: restoring the latest step tries the newest first and, when it
cannot be read (truncated or missing data file, damaged `_METADATA` / `_CHECKPOINT_METADATA`),
falls back to the previous intact step, moving each unreadable newer step aside as
`STEP.corrupt-<time>` (never deleted) with one log line. A save that fails (disk full, permission)
raises `CheckpointSaveError` naming the folder and the free space; older steps stay as they were.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Mapping

import jax
import orbax.checkpoint as ocp

from msc_seg import config_lib, reporting

_log = reporting.log_and_print


class CheckpointError(FileNotFoundError):
    """A checkpoint that is not there or cannot be read; the message says what to do."""


class WorkdirMismatchError(RuntimeError):
    """The workdir holds checkpoints of a different (structurally incompatible) config."""


class CheckpointSaveError(RuntimeError):
    """A save failed (disk full, permission); the message names the folder and the free space."""


def _short(error: BaseException, limit: int = 240) -> str:
    """`Type: message` on one line, cut to `limit` characters: tensorstore errors carry
    kilobytes of spec, so their middle goes and their code (DATA_LOSS...) and end stay."""
    text = " ".join(str(error).split()).split(" [tensorstore_spec")[0]
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if len(text) <= limit:
        return text
    head = text[:40]
    return head + " ... " + text[-(limit - len(head) - 5) :]


def _free_space(folder: pathlib.Path) -> str:
    """'12.3 GiB free' (or MiB) on the disk of `folder` (or its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    if free >= 2**30:
        return f"{free / 2**30:.1f} GiB free"
    return f"{free / 2**20:.1f} MiB free"


_FILE_SYSTEM_WORDS = re.compile(
    r"No space left|Disk quota|Permission denied|Read-only file system|Operation not permitted"
    r"|PERMISSION_DENIED",
    re.IGNORECASE,
)


def _is_file_system_error(error: BaseException) -> bool:
    """Whether a failed save is the disk's or the folder's fault: an OSError anywhere in the
    cause chain, or its words in a wrapper's text (tensorstore and orbax re-raise OSErrors as
    ValueError / JaxRuntimeError with the errno text kept). Barrier or peer errors are not."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) or _FILE_SYSTEM_WORDS.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def validate_step_dir(step_dir: pathlib.Path) -> None:
    """ValueError when a step folder's metadata files (STEP/_CHECKPOINT_METADATA, the item's
    _METADATA) are not valid JSON; orbax itself reads past a damaged _CHECKPOINT_METADATA."""
    item = _item_dir(step_dir)
    for path in (step_dir / "_CHECKPOINT_METADATA", item / "_METADATA"):
        if path.exists():
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{path.name} is not valid JSON ({e})") from None
        elif path.name == "_METADATA":
            raise FileNotFoundError(f"{path} is missing")


def _is_main_process() -> bool:
    return jax.process_index() == 0


def _all_processes_ok(ok: bool) -> bool:
    """Whether `ok` holds on every process (one tiny all-gather; no-op on one process), so that
    every host takes the same fallback decision."""
    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def move_aside(step_dir: pathlib.Path) -> pathlib.Path:
    """Renames an unreadable step folder to STEP.corrupt-<time> (process 0; nothing deleted)."""
    target = step_dir.with_name(f"{step_dir.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    if _is_main_process():
        step_dir.rename(target)
    _sync(f"move_aside_{step_dir.name}")
    return target


def restore_newest_intact(
    step_dirs: list[pathlib.Path], restore: Callable[[pathlib.Path], object], log: Callable
):
    """(state, step folder) of the newest of `step_dirs` (newest first) that restores.

    Each newer folder that failed is moved aside with one `log` line once an older one restored;
    when none restores, nothing is moved and CheckpointError names every step's error (so a
    checkpoint that does not fit the config is never taken for a corrupt one).
    """
    failed: list[tuple[pathlib.Path, BaseException]] = []
    for step_dir in step_dirs:
        try:
            validate_step_dir(step_dir)
            state, error = restore(step_dir), None
        except Exception as e:  # noqa: BLE001 - any read/validation error: try the previous step
            state, error = None, e
        if not _all_processes_ok(error is None):
            failed.append((step_dir, error or RuntimeError("unreadable on another process")))
            continue
        for bad, bad_error in failed:
            moved = move_aside(bad)
            log(
                f"checkpoint step {bad.name} cannot be restored ({_short(bad_error)}); moved to "
                f"{moved.name}, resuming from step {step_dir.name}"
            )
        return state, step_dir
    errors = "; ".join(f"step {d.name}: {_short(e, 160)}" for d, e in failed)
    where = step_dirs[0].parent if step_dirs else "?"
    raise CheckpointError(f"no checkpoint under {where} can be restored ({errors})")


def save_whole_replicas_off_tpu() -> None:
    """Makes orbax write each replicated array from one replica, except on TPU.

    orbax's default on CPU and TPU ("replica-parallel") cuts every replicated array into one
    slice per replica and writes the slices from their devices. Each distinct array shape costs
    a jitted `slice` compile on the run's first save: 232 of them for the tiny test model,
    ~19 s on a 2-core CPU. On one host all replicas sit on the same disk, so nothing is gained.
    orbax already turns this off on GPU; TPU pods keep it (there it spreads the writes over the
    hosts)."""
    if jax.default_backend() != "tpu":
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
        )


class Checkpointer:
    """Wraps two orbax CheckpointManagers (latest-K and best-by-mIoU)."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, async_save: bool = True):
        save_whole_replicas_off_tpu()
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
        self.failed: CheckpointSaveError | None = None  # the first failed save, raised again

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state) -> None:
        """Saves `state` as step `step` (no-op if that step is already saved); a failed save
        (also an earlier asynchronous one) raises CheckpointSaveError."""
        if step in self.latest.all_steps():
            return
        with self._save_errors(self.latest, step):
            self.latest.save(step, args=ocp.args.StandardSave(state), force=True)

    @contextlib.contextmanager
    def _save_errors(self, mgr, step: int | None):
        """Turns any failure of a save into one CheckpointSaveError line: where, the free space,
        which steps are intact, what to do."""
        if self.failed:
            raise self.failed
        try:
            yield
        except Exception as e:  # noqa: BLE001 - orbax wraps OSErrors in several types
            # Saves are asynchronous: the failure may be an earlier step's, surfacing now.
            folder = pathlib.Path(str(mgr.directory))
            intact = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit())
            unfinished = sorted(p.name for p in folder.glob("*.orbax-checkpoint-tmp*"))
            what = f"step {unfinished[0].split('.')[0]}" if unfinished else f"step {step}"
            advice = (
                "Free space or fix the folder's permissions and rerun to resume"
                if _is_file_system_error(e)
                else "Rerun to resume"
            )
            self.failed = CheckpointSaveError(
                f"saving {what} under {folder} failed ({_short(e, 160)}); {_free_space(folder)} "
                f"there; saved steps {intact or 'none'} are intact. {advice}"
            )
            raise self.failed from None

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
        with self._save_errors(self.best, step):
            # No two managers' saves at once: orbax syncs each save's processes through barriers
            # keyed by a per-process counter, and a best save racing the latest manager's async
            # save of the same step (eval and checkpoint every 2 steps, 2 x 4 localhost pod)
            # failed at step 72 with "set_value_start is already ongoing" on one process.
            self.latest.wait_until_finished()
            self.best.save(
                step, args=ocp.args.StandardSave(state), metrics={"mIoU": float(miou)}, force=True
            )
            self.best.wait_until_finished()
            if _is_main_process():
                self._best_file.write_text(json.dumps({"step": int(step), "mIoU": float(miou)}))
        return True

    def restore(self, abstract_state, step: int | None = None, *, best: bool = False):
        """Restores into `abstract_state` (ShapeDtypeStructs with shardings).

        step None = the latest (or, with best=True, the best) checkpoint; the latest falls back
        to the previous intact step when it cannot be read (see `restore_newest_intact`).
        """
        mgr = self.best if best else self.latest
        args = ocp.args.StandardRestore(abstract_state)
        if step is None and not best:
            steps = sorted(mgr.all_steps(), reverse=True)
            if not steps:
                raise FileNotFoundError(
                    f"no checkpoint under {mgr.directory} (checkpoints/); train first"
                )
            folder = pathlib.Path(str(mgr.directory))
            state, step_dir = restore_newest_intact(
                [folder / str(s) for s in steps],
                lambda d: mgr.restore(int(d.name), args=args),
                log=_log,
            )
            if int(step_dir.name) != steps[0]:
                mgr.reload()  # the moved-aside steps are gone from its list
            return state, int(step_dir.name)
        if step is None:
            step = mgr.best_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {mgr.directory} (best/); train first")
        try:
            return mgr.restore(step, args=args), step
        except Exception as e:  # noqa: BLE001 - one line, not a tensorstore traceback
            raise CheckpointError(
                f"cannot restore step {step} from {mgr.directory} ({_short(e)}); pass another "
                "--checkpoint (latest falls back to the newest intact step)"
            ) from None

    def wait(self) -> None:
        with self._save_errors(self.latest, None):
            self.latest.wait_until_finished()
        with self._save_errors(self.best, None):
            self.best.wait_until_finished()

    def close(self) -> None:
        for mgr in (self.latest, self.best):
            try:
                mgr.close()
            except Exception:  # noqa: BLE001 - a failed save was already reported
                if not self.failed:
                    raise


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
    return state_tree(getattr(metadata, "item_metadata", metadata))


def state_tree(abstract_state) -> dict[str, tuple[int, ...]]:
    """'params/.../kernel' -> shape of every leaf of a state tree (the abstract state a config
    builds, or a checkpoint's metadata tree)."""
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


def _newest_tree_differences(workdir: pathlib.Path, current: Mapping) -> list[str]:
    """tree_differences against the newest checkpoint, or [] when any saved step's tree matches
    (newest first). A damaged newest step (e.g. a truncated `_sharding` file: its metadata then
    lists only some arrays) must not pass for another config: restore moves it aside and falls
    back to the previous intact step. Only when no step matches is the newest one's difference
    returned."""
    items = [
        _item_dir(p) for manager in ("checkpoints", "best") for p in _step_dirs(workdir / manager)
    ]
    newest = None
    for item in items:
        try:
            diffs = tree_differences(saved_tree(item), current)
        except Exception:  # noqa: BLE001 - unreadable metadata: damaged, judged by restore
            continue
        if not diffs:
            return []
        newest = diffs if newest is None else newest
    return newest or []


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
        tree_diffs = _newest_tree_differences(workdir, state_tree(abstract_state))
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
    steps = _step_dirs(manager_dir)
    return steps[0] if steps else None


def _step_dirs(manager_dir: pathlib.Path) -> list[pathlib.Path]:
    """The committed step folders of an orbax manager folder, newest first ([] if none)."""
    if not manager_dir.is_dir():
        return []
    steps = [p for p in manager_dir.iterdir() if p.is_dir() and _is_step_name(p.name)]
    return sorted(steps, key=lambda p: -int(p.name))


def latest_saved_step(workdir: str | pathlib.Path) -> int | None:
    """The newest committed step under WORKDIR/checkpoints/, from the folder names only (no
    orbax manager; safe from any thread)."""
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


def _restore_item_raw(item_dir: pathlib.Path, abstract_state):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(item_dir.absolute(), abstract_state)


def restore_item(item_dir: pathlib.Path, abstract_state):
    """The state of an orbax item folder, restored into `abstract_state` (current shardings);
    CheckpointError naming the folder when it cannot be read or does not fit."""
    try:
        validate_step_dir(item_dir.parent if item_dir.name == "default" else item_dir)
        return _restore_item_raw(item_dir, abstract_state)
    except Exception as e:  # noqa: BLE001 - one line, not a tensorstore traceback
        raise CheckpointError(
            f"cannot restore {item_dir} ({_short(e)}): a damaged checkpoint or one of another "
            "config; pass another --checkpoint or the config it was trained with"
        ) from None


def restore_latest_item(workdir: str | pathlib.Path, abstract_state):
    """(state, item folder) of the newest intact step of WORKDIR/checkpoints (--checkpoint=
    latest in predict): unreadable newer steps are moved aside as in training."""
    folder = pathlib.Path(workdir) / "checkpoints"
    steps = sorted(
        (p for p in folder.glob("*") if p.is_dir() and _is_step_name(p.name)),
        key=lambda p: int(p.name),
        reverse=True,
    )
    if not steps:
        raise CheckpointError(
            f"--workdir={workdir} has no checkpoint under checkpoints/; {_TRAIN_FIRST}"
        )
    state, step_dir = restore_newest_intact(
        steps, lambda d: _restore_item_raw(_item_dir(d), abstract_state), log=_log
    )
    return state, _item_dir(step_dir)
