"""orbax checkpoints: the last K steps under `checkpoints/`, the best by val mIoU under `best/`.

Saves are asynchronous; restores go into the abstract state of the *current* run, so a run saved on
8 devices resumes on 1 (or the other way round) with the current shardings.
"""

from __future__ import annotations

import json
import pathlib

import orbax.checkpoint as ocp


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
