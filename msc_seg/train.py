"""train_and_evaluate(config, workdir): the training loop (resume, steps, logs, checkpoints,
evaluations, preemption). Everything it runs is built by experiment.py."""

from __future__ import annotations

import contextlib
import json
import operator
import pathlib
import signal
import time

import jax
import ml_collections
import numpy as np

from msc_seg import checkpointing, compile_cache, config_lib, distributed, experiment, reporting
from msc_seg import mesh as mesh_lib
from msc_seg.train_state import count_params


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/inf; nothing was saved from that step on."""


class _Preemption:
    """Turns SIGTERM into a flag the loop checks (save, then stop) instead of a hard kill.

    On a pod the signal may reach one host only: `stop_now()` makes it a pod-wide decision (a
    max of every process's flag over the mesh, one int32 per device, dispatched each step and
    read one step later, so the host never waits on it), taken by every process at the same
    step boundary; then all save together and exit.
    """

    def __init__(self):
        self.requested = False
        self.pod = False  # agree_over: a multi-process run decides with its peers
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no handler
            self._old = None
        return self

    def _handle(self, *_):
        self.requested = True

    def agree_over(self, mesh) -> None:
        """Multi-process: decide with the other processes of `mesh` (see the class doc)."""
        if jax.process_count() == 1:
            return
        import jax.numpy as jnp

        self._sharding = mesh_lib.batch_sharding(mesh)
        mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        self._local = len(mine)
        self._max = jax.jit(jnp.max, out_shardings=mesh_lib.replicated_sharding(mesh))
        self._pending = None
        self.pod = True

    def stop_now(self) -> bool:
        """Whether the loop stops after this step (on a pod: the agreed flag of the previous
        step boundary, the same answer on every process)."""
        if not self.pod:
            return self.requested
        decided = bool(self._pending) if self._pending is not None else False
        flags = np.full((self._local,), int(self.requested), np.int32)
        self._pending = self._max(jax.make_array_from_process_local_data(self._sharding, flags))
        if decided:
            self.requested = True  # a peer's signal: this process saves and stops too
        return decided

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


_PEER_FAILURE_MARKS = ("gloo", "peer", "connection", "deadline_exceeded", "unavailable", "task:")


@contextlib.contextmanager
def _peer_failures_reported():
    """Multi-process: a collective that fails because a peer died ends this process with the
    one-line report of distributed.report_peer_lost instead of a traceback."""
    try:
        yield
    except Exception as e:
        text = str(e)
        if jax.process_count() > 1 and any(m in text.lower() for m in _PEER_FAILURE_MARKS):
            distributed.collective_failed(text.strip().splitlines()[0] if text.strip() else "")
        raise


def _initial_state(exp: experiment.Experiment):
    """(state, start step): the workdir's latest checkpoint, else a fresh (or imported) state."""
    start = exp.checkpointer.latest_step()
    if start is not None:
        reporting.log_and_print(f"restoring step {start} of {exp.workdir} ...")
        with reporting.Heartbeat(lambda t: f"restoring ... {t}"):
            state, start = exp.checkpointer.restore(exp.parts.abstract_state)
        reporting.log_and_print(f"Resuming from step {start} in {exp.workdir}")
        return state, start
    # A jitted initialiser: its compile takes seconds for tiny models, minutes for paper sizes.
    reporting.log_and_print("initialising the model's weights (compiling the initialiser) ...")
    with reporting.Heartbeat(lambda t: f"initialising the model's weights ... {t}"):
        state = jax.block_until_ready(exp.parts.create_state())
    if exp.config.model_init:
        from msc_seg.models.pretrained import apply_pretrained

        state = apply_pretrained(state, exp.config.model_init, log=reporting.log_and_print)
    return state, 0


def release_setup_programs() -> None:
    """Drops JAX's compiled programs and traces so far: the initialiser's (or the restore's)
    are never run again, and XLA keeps each executable's program and buffer plan in memory
    (UPerNet-Swin-T: the initialiser holds ~0.16 GiB of RSS for the whole run). Small helpers
    compiled before recompile on their next use; nothing of the train step is compiled yet."""
    jax.clear_caches()


def _raise_if_nonfinite(exp: experiment.Experiment, step: int, nonfinite) -> None:
    if float(nonfinite) > 0:
        last = exp.checkpointer.latest_step()
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step}; the state of that step was "
            f"discarded and nothing was saved after it (last checkpoint: step {last}). "
            "Lower schedule.learning_rate or check the data."
        )


def _program_key(exp: experiment.Experiment) -> str:
    """What identifies the train step's compiled program across runs on one machine."""
    c = exp.config
    return (
        f"train/{c.model.name}/{c.model.get('backbone', '-')}/{c.model.get('dtype', 'float32')}"
        f"/crop{'x'.join(map(str, c.dataset.train.crop_size))}/batch{c.batch_size}"
        f"/contrastive{int(c.loss.contrastive.weight > 0)}/{jax.devices()[0].device_kind}"
        f"x{exp.mesh.size}"
    )


def _evaluate_and_keep_best(exp: experiment.Experiment, state, step: int) -> dict:
    results = exp.evaluate(state, step)
    results["step"] = step
    with reporting.Heartbeat(lambda t: f"keeping the best checkpoint ... {t}"):
        best = np.isfinite(results["mIoU"]) and exp.checkpointer.save_if_best(
            step, state, results["mIoU"]
        )
    if best:
        reporting.log_and_print(f"New best val mIoU {100 * results['mIoU']:.2f} at step {step}")
    return results


def _finished_run(config: ml_collections.ConfigDict, workdir) -> dict | None:
    """A workdir whose newest checkpoint is at total_steps is done: say so (writing nothing)
    and return its last evaluation, instead of building the run and evaluating again. None when
    there is training left (or the workdir's config is refused: `build` says why)."""
    workdir = pathlib.Path(workdir)
    latest = checkpointing.latest_saved_step(workdir)
    if latest is None or latest < config.total_steps:
        return None
    config_lib.upgrade(config)
    checkpointing.check_workdir_config(workdir, config_lib.to_dict(config), what="this config")
    reporting.log_and_print(
        f"{workdir}: already at total_steps={config.total_steps}; nothing to do (use "
        "--mode=eval to evaluate again)"
    )
    table = workdir / f"eval_{latest}.json"
    results = json.loads(table.read_text()) if table.exists() else {}
    return results | {"step": latest}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains (resuming from the workdir's latest checkpoint), evaluates, checkpoints.

    Returns the last evaluation's results (dict with aAcc, mIoU, mAcc, IoU, Acc, step).
    Metrics are summed on device and fetched one step late (as is the non-finite flag), so the
    host never waits for the step it just dispatched.
    """
    finished = _finished_run(config, workdir)
    if finished is not None:
        return finished
    exp = experiment.build(config, workdir, mode="train")
    c = config
    try:
        state, step = _initial_state(exp)
        release_setup_programs()
        exp.reporter.drop_rows_after(step)  # steps retrained after a kill are not logged twice
        reporting.log_and_print(
            f"Model {c.model.name}/{c.model.get('backbone', '-')}: "
            f"{count_params(state.params):,} parameters; "
            f"{jax.device_count()} devices, mesh {dict(exp.mesh.shape)}"
        )
        key = jax.random.key(c.seed)
        batches = exp.train_batches(step)
        reporter = exp.reporter
        reporter.write_config(step, config_lib.to_dict(c))  # TensorBoard hparams + text
        reporter.restart_clock(step)
        results: dict = {}
        pending = None  # (step, nonfinite flag) of the previous step, checked one step late
        sums, count = None, 0  # metrics summed on device since the last log line
        to_log = None  # (step, sums, count) written one step late

        with _Preemption() as preemption, _peer_failures_reported():
            preemption.agree_over(exp.mesh)
            distributed.on_peer_lost(lambda: checkpointing.latest_saved_step(exp.workdir))
            while step < c.total_steps:
                batch = mesh_lib.host_batch_to_global(next(batches), exp.mesh)
                first = pending is None
                if first:  # the first step compiles (or loads) the program
                    with compile_cache.Compilation("the train step", _program_key(exp)):
                        state, metrics = exp.parts.train_step(state, batch, key)
                        jax.block_until_ready(metrics)
                else:
                    state, metrics = exp.parts.train_step(state, batch, key)
                step += 1
                if first:  # steps/s and the ETA count the steps after the compile
                    reporter.restart_clock(step)
                if pending is not None:
                    _raise_if_nonfinite(exp, *pending)  # waits for the previous step
                # Every log line is timed when its step has finished (here, or once fetched
                # after the loop), not when the next one was queued: no window is counted as
                # taking no time (the bogus rate of the line after SIGTERM).
                previous_done = time.time()
                pending = (step, metrics["nonfinite"])
                if to_log is not None:
                    reporter.write_mean_scalars(*to_log, now=previous_done)
                    to_log = None
                sums = metrics if sums is None else jax.tree.map(operator.add, sums, metrics)
                count += 1
                if step % c.log_every_steps == 0 or step == c.total_steps:
                    to_log, sums, count = (step, sums, count), None, 0
                if step % c.checkpoint_every_steps == 0 and step < c.total_steps:
                    _raise_if_nonfinite(exp, *pending)
                    exp.checkpointer.save(step, state)
                if step % c.eval_every_steps == 0 and step < c.total_steps:
                    if to_log is not None:
                        reporter.write_mean_scalars(*to_log)
                        to_log = None
                    results = _evaluate_and_keep_best(exp, state, step)
                    reporter.restart_clock(step)  # steps/s: training only, not the evaluation
                if preemption.stop_now():
                    break
        if pending is not None:
            _raise_if_nonfinite(exp, *pending)
        if to_log is not None:
            reporter.write_mean_scalars(*to_log)
        exp.checkpointer.save(step, state)
        if preemption.requested and step < c.total_steps:
            exp.checkpointer.wait()
            who = "" if jax.process_count() == 1 else " (on the pod: every process stops here)"
            reporting.log_and_print(f"SIGTERM: saved step {step}; rerun to resume{who}")
            return results
        if not results or results.get("step") != step:
            results = _evaluate_and_keep_best(exp, state, step)
        return results
    finally:
        exp.close()
