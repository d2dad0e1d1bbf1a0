"""train_and_evaluate(config, workdir): mesh, state, loop, evaluation, checkpoints, preemption."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from msc_seg import checkpointing, config_lib, evaluate, reporting
from msc_seg import mesh as mesh_lib
from msc_seg.data import pipeline, registry
from msc_seg.train_state import (
    ModelDef,
    TrainState,
    count_params,
    make_state_factory,
    make_tx_builder,
)
from msc_seg.train_step import make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN/inf; nothing was saved from that step on."""


class WorkdirMismatchError(RuntimeError):
    """The workdir holds checkpoints of a different (structurally incompatible) config."""


@dataclasses.dataclass
class Run:
    """Everything a training or evaluation run holds."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    mesh: Any
    spec: Any
    data_dir: str
    model_def: ModelDef
    create_state: Any
    abstract_state: TrainState
    tx_builder: Any
    checkpointer: checkpointing.Checkpointer
    reporter: reporting.Reporter | None = None
    _eval_step: Any = None

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()
        if self.reporter is not None:
            self.reporter.close()


def resolve_data_dir(config) -> str:
    """dataset.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if config.dataset.data_dir:
        return str(pathlib.Path(config.dataset.data_dir).expanduser())
    return os.environ.get("TFDS_DATA_DIR", str(pathlib.Path("~/tensorflow_datasets").expanduser()))


def check_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir whose checkpoints belong to a structurally different config.

    Writes the resolved config as workdir/config.json; a previous, different config.json is kept
    as config.<time>.json (never lost).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    current = json.loads(config_lib.to_json(config))
    has_ckpt = any(
        (workdir / d).is_dir() and any((workdir / d).iterdir()) for d in ("checkpoints", "best")
    )
    if path.exists():
        saved = json.loads(path.read_text())
        diffs = config_lib.structural_differences(saved, current)
        if diffs and has_ckpt:
            raise WorkdirMismatchError(
                f"workdir {workdir} holds checkpoints of another config ({'; '.join(diffs)}). "
                "Use a new --workdir, or move its checkpoints/ and best/ away to start over."
            )
        if saved != current and jax.process_index() == 0:
            path.rename(workdir / f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
    elif has_ckpt:
        raise WorkdirMismatchError(
            f"workdir {workdir} has checkpoints but no config.json, so it cannot be checked "
            "against this config; use a new --workdir"
        )
    if jax.process_index() == 0:
        path.write_text(config_lib.to_json(config))


def setup_run(config, workdir, *, for_training: bool) -> Run:
    workdir = pathlib.Path(workdir)
    config_lib.validate(config, config_lib.RuntimeFacts(jax.device_count(), jax.process_count()))
    if for_training:
        check_workdir(workdir, config)
    elif not workdir.exists():
        raise FileNotFoundError(f"workdir {workdir} does not exist; train first or fix --workdir")
    mesh = mesh_lib.make_mesh(config.mesh.data)
    spec = registry.get_dataset_spec(config.dataset.name)
    data_dir = resolve_data_dir(config)
    pipeline.prepare_dataset(spec, data_dir)
    tx_builder = make_tx_builder(config)
    model_def, create, abstract = make_state_factory(config, spec.num_classes, mesh, tx_builder)
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
    reporter = reporting.Reporter(workdir, config.total_steps) if for_training else None
    return Run(
        config,
        workdir,
        mesh,
        spec,
        data_dir,
        model_def,
        create,
        abstract,
        tx_builder,
        ckpt,
        reporter,
    )


def _eval_batches(run: Run):
    c = run.config
    return pipeline.make_eval_dataset(
        run.spec,
        data_dir=run.data_dir,
        split=c.dataset.eval_split or run.spec.eval_split,
        batch_size=c.eval.batch_size // jax.process_count(),
        pad_shape=tuple(c.eval.pad_shape),
        resize_short_side=c.eval.resize_short_side or None,
        resize_long_side=c.eval.resize_long_side or None,
    )


def evaluate_state(run: Run, state: TrainState, step: int) -> dict:
    """Evaluates `state` on the eval split with the configured inference protocol (`eval.mode`,
    windows, scales, flip), prints and writes the per-class table."""
    c = run.config
    if run._eval_step is None:
        step_fn = evaluate.make_eval_step(
            run.model_def,
            run.spec.num_classes,
            resize_to_labels=evaluate.resizes_images(c.eval),
            protocol=evaluate.inference_protocol(c.eval),
        )
        run._eval_step = jax.jit(step_fn)
    batches = _eval_batches(run)
    if c.eval.max_examples:
        batches = itertools.islice(batches, -(-c.eval.max_examples // c.eval.batch_size))
    cm, images = evaluate.run_evaluation(
        run._eval_step,
        state,
        batches,
        run.mesh,
        num_images=c.eval.num_images_to_log,
        palette=run.spec.palette,
    )
    return evaluate.report_evaluation(
        cm,
        step,
        run.spec.class_names,
        run.workdir,
        run.reporter,
        images,
        class_groups=run.spec.class_groups,
    ) | {"confusion_matrix": cm}


def contrastive_kwargs(config, num_classes: int) -> dict:
    """Keyword arguments of `losses.contrastive_loss_for_batch` from `config.loss.contrastive`."""
    cc = config.loss.contrastive
    return dict(
        num_classes=num_classes,
        images_per_group=cc.images_per_group,
        gather_all_groups=cc.gather_all_groups,
        temperature=cc.temperature,
        scale_weights=tuple(cc.scale_weights),
        cross_scale=cc.cross_scale,
        w_high_low=cc.w_high_low,
        w_high_mid=cc.w_high_mid,
        detach_coarse=cc.detach_coarse,
        min_views=cc.min_views_per_class,
        max_views=cc.max_views_per_class,
        max_total=cc.max_features_total,
    )


class _Preemption:
    """Turns SIGTERM into a flag the loop checks (save, then stop) instead of a hard kill."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no handler
            self._old = None
        return self

    def _handle(self, *_):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains (resuming from the workdir's latest checkpoint), evaluates, checkpoints.

    Returns the last evaluation's results (dict with aAcc, mIoU, mAcc, IoU, Acc, step).
    """
    run = setup_run(config, workdir, for_training=True)
    c = config
    try:
        start = run.checkpointer.latest_step()
        if start is not None:
            state, start = run.checkpointer.restore(run.abstract_state)
            reporting.log_and_print(f"Resuming from step {start} in {run.workdir}")
        else:
            state, start = run.create_state(), 0
            if c.model.pretrained:
                from msc_seg.models.pretrained import apply_pretrained

                state = apply_pretrained(state, c.model.pretrained, log=reporting.log_and_print)
        num_params = count_params(state.params)
        reporting.log_and_print(
            f"Model {c.model.name}/{c.model.backbone}: {num_params:,} parameters; "
            f"{jax.device_count()} devices, mesh {dict(run.mesh.shape)}"
        )
        tx = run.tx_builder(state.params)
        step_fn = make_train_step(
            run.model_def,
            tx,
            run.tx_builder.schedule,
            aux_weight=c.loss.aux_weight,
            class_weights=tuple(c.loss.class_weights),
            contrastive_weight=c.loss.contrastive.weight,
            contrastive_kwargs=contrastive_kwargs(c, run.spec.num_classes),
        )
        train_step = jax.jit(step_fn, donate_argnums=(0,))
        key = jax.random.key(c.seed)
        train_iter = pipeline.make_train_iterator(
            run.spec,
            data_dir=run.data_dir,
            split=c.dataset.train_split or run.spec.train_split,
            batch_size=c.batch_size // jax.process_count(),
            crop_size=tuple(c.dataset.crop_size),
            seed=c.seed,
            start_step=start,
            scale_range=tuple(c.dataset.scale_range),
            aspect_range=tuple(c.dataset.aspect_range),
            cat_max_ratio=c.dataset.cat_max_ratio,
            color_jitter=c.dataset.color_jitter,
            shuffle_buffer=c.dataset.shuffle_buffer,
            prefetch=c.dataset.prefetch,
        )
        results = _train_loop(run, state, start, train_step, train_iter, key)
    finally:
        run.close()
    return results


def _train_loop(run: Run, state, start: int, train_step, train_iter, key) -> dict:
    c = run.config
    reporter = run.reporter
    reporter.restart_clock(start)
    results: dict = {}
    pending = None  # (step, metrics) of the previous step: fetched one step late, never blocks
    acc, acc_n = None, 0

    def check(pending_step, m):
        if float(m["nonfinite"]) > 0:
            last = run.checkpointer.latest_step()
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {pending_step}; the state of that step was "
                f"discarded and nothing was saved after it (last checkpoint: step {last}). "
                "Lower optimizer.learning_rate or check the data."
            )

    to_log = None  # (step, summed metrics, count): written one step late so the host never waits

    def flush_log():
        nonlocal to_log
        if to_log is not None:
            log_step, sums, n = to_log
            reporter.write_scalars(
                log_step, {k: float(v) / n for k, v in jax.device_get(sums).items()}
            )
            to_log = None

    with _Preemption() as preempt:
        step = start
        while step < c.total_steps:
            batch = mesh_lib.host_batch_to_global(next(train_iter), run.mesh)
            state, m = train_step(state, batch, key)
            step += 1
            if pending is not None:
                check(*pending)
            pending = (step, {"nonfinite": m["nonfinite"]})
            flush_log()
            acc = m if acc is None else jax.tree.map(lambda a, b: a + b, acc, m)
            acc_n += 1
            if step % c.log_every_steps == 0 or step == c.total_steps:
                to_log, acc, acc_n = (step, acc, acc_n), None, 0
            if step % c.checkpoint_every_steps == 0 and step < c.total_steps:
                check(*pending)
                run.checkpointer.save(step, state)
            if step % c.eval_every_steps == 0 and step < c.total_steps:
                flush_log()
                results = _evaluate_and_keep_best(run, state, step)
            if preempt.requested:
                check(*pending)
                flush_log()
                run.checkpointer.save(step, state)
                run.checkpointer.wait()
                reporting.log_and_print(f"SIGTERM: saved step {step}; rerun to resume")
                return results
        if pending is not None:
            check(*pending)
        flush_log()
        run.checkpointer.save(step, state)
        if not results or results.get("step") != step:
            results = _evaluate_and_keep_best(run, state, step)
    return results


def _evaluate_and_keep_best(run: Run, state, step: int) -> dict:
    results = evaluate_state(run, state, step)
    results["step"] = step
    if np.isfinite(results["mIoU"]) and run.checkpointer.save_if_best(step, state, results["mIoU"]):
        reporting.log_and_print(f"New best val mIoU {100 * results['mIoU']:.2f} at step {step}")
    return results
