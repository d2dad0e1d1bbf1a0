"""End to end: training on 8 CPU devices, SIGTERM + resume, eval-only, bad workdirs, NaN guard.

All runs use a micro UPerNet-Swin on 64x64 crops of the demo dataset, built once per module.
"""

import io
import json
import os
import pathlib
import signal

import jax
import numpy as np
import pytest

from msc_seg import checkpointing, config_lib, experiment, modes, train
from msc_seg.data import builders, pipeline, registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    builders.prepare_dataset(registry.get_dataset_spec("demo"), str(d))
    return str(d)


def micro_config(data_dir, **overrides):
    """A 4-step run of a micro UPerNet-Swin; every test uses the same program (one compile)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_cfg", ROOT / "configs" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("steps=4")
    c.dataset.data_dir = data_dir
    c.dataset.train.crop_size = (64, 64)
    c.dataset.train.shuffle_buffer = 16
    c.model.backbone = "swin_micro_test"
    c.model.decoder_channels = 16
    c.model.aux_channels = 8
    c.model.embedding_dim = 16
    c.loss.contrastive.weight = 0.1  # CE + 0.4 aux + 0.1 (MS + CS), as the paper
    c.log_every_steps = 1
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.eval.batch_size = 8
    c.eval.max_examples = 16
    c.schedule.warmup_steps = 1
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    c.lock()
    return c


def params_of(workdir, config):
    exp = experiment.build(config, workdir, mode="eval")
    try:
        state, step = exp.checkpointer.restore(exp.parts.abstract_state)
        return jax.device_get(state), step
    finally:
        exp.close()


def _wrap_train_iterator(monkeypatch, hook):
    """hook(i, batch) runs before the train iterator yields its i-th batch (0-based)."""
    real = pipeline.make_train_iterator

    def wrapped(*args, **kwargs):
        it = real(*args, **kwargs)

        def gen():
            for i, batch in enumerate(it):
                yield hook(i, batch) or batch

        return gen()

    monkeypatch.setattr(pipeline, "make_train_iterator", wrapped)


def _sigterm_after(n_steps, monkeypatch):
    """Sends this process SIGTERM while the batch of step n_steps is fetched: the loop saves
    after that step and stops, as on a real preemption."""

    def hook(i, _):
        if i + 1 == n_steps:
            os.kill(os.getpid(), signal.SIGTERM)

    _wrap_train_iterator(monkeypatch, hook)


@pytest.fixture(scope="module")
def unbroken(data_dir, tmp_path_factory):
    """An uninterrupted 4-step run on 8 devices: (workdir, config, results)."""
    workdir = tmp_path_factory.mktemp("unbroken")
    config = micro_config(data_dir)
    return workdir, config, train.train_and_evaluate(config, workdir)


def test_train_steps_on_eight_devices_write_logs_checkpoint_and_eval(unbroken):
    workdir, _, results = unbroken
    assert jax.device_count() == 8
    assert np.isfinite(results["mIoU"]) and results["step"] == 4
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4]
    assert all(np.isfinite(x["loss"]) and x["loss_ce"] > 0 for x in train_lines)
    for key in (
        "loss_aux",
        "loss_contrastive",
        "loss_ms/s0",
        "loss_ms/s3",
        "loss_cs/high_low",
        "loss_cs/high_mid",
        "num_anchors/s0",
        "views_per_class/s0",
        "learning_rate",
    ):
        assert key in train_lines[0], key
    assert train_lines[0]["num_anchors/s0"] > 0 and train_lines[0]["loss_ms/s0"] > 0
    first = train_lines[0]
    total = first["loss_ce"] + 0.4 * first["loss_aux"] + 0.1 * first["loss_contrastive"]
    assert first["loss"] == pytest.approx(total, rel=1e-5)
    assert train_lines[0]["loss"] != train_lines[-1]["loss"]
    assert json.loads((workdir / "config.json").read_text())["total_steps"] == 4
    assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (workdir / "checkpoints" / "4").is_dir()
    assert (workdir / "best" / "4").is_dir()
    table = json.loads((workdir / "eval_4.json").read_text())
    assert table["mIoU"] == pytest.approx(results["mIoU"])
    assert len(table["per_class"]) == 8


def test_predict_reads_the_checkpoints_that_training_wrote(unbroken, tmp_path):
    from PIL import Image

    workdir, config, _ = unbroken
    (tmp_path / "in").mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in" / "scene.png")
    for checkpoint in ("latest", "best", "4", str(workdir / "checkpoints" / "4")):
        out = tmp_path / f"out_{checkpoint.replace('/', '_')}"
        result = modes.predict_images(
            config,
            images=tmp_path / "in",
            output=out,
            workdir=str(workdir),
            checkpoint=checkpoint,
            stream=io.StringIO(),
        )
        assert result["written"] == ["scene"], checkpoint
        ids = np.asarray(Image.open(out / "scene_ids.png"))
        assert ids.shape == (40, 56) and ids.max() < 8


def test_eval_only_on_the_final_checkpoint_reproduces_the_training_miou(unbroken):
    workdir, config, trained = unbroken
    again = modes.evaluate_checkpoint(config, workdir, "latest")
    assert again["mIoU"] == trained["mIoU"]
    np.testing.assert_array_equal(again["confusion_matrix"], trained["confusion_matrix"])


def test_run_stopped_by_sigterm_resumes_at_the_saved_step_with_the_same_state(
    unbroken, data_dir, tmp_path, monkeypatch
):
    unbroken_dir, config, _ = unbroken
    with monkeypatch.context() as m:
        _sigterm_after(2, m)
        train.train_and_evaluate(config, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r]
    assert rates and max(rates) < 100, rates  # the line written after SIGTERM too: no bogus rate
    saved, step = params_of(tmp_path, config)
    assert step == 2 and int(saved.step) == 2
    assert not (tmp_path / "checkpoints" / "4").exists()

    results = train.train_and_evaluate(config, tmp_path)  # resumes at 2, runs 3 and 4
    assert results["step"] == 4
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]
    a, _ = params_of(unbroken_dir, config)
    b, _ = params_of(tmp_path, config)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_resume_on_a_different_device_count(data_dir, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _sigterm_after(1, m)
        train.train_and_evaluate(micro_config(data_dir), tmp_path)
    config2 = micro_config(data_dir, **{"mesh.data": 2})
    results = train.train_and_evaluate(config2, tmp_path)
    assert results["step"] == 4
    state, _ = params_of(tmp_path, config2)
    assert int(state.step) == 4


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"model.decoder_channels": 32}, "model.decoder_channels"),
        ({"loss.contrastive.weight": 0.0}, "loss.contrastive.weight"),
        ({"loss.aux_weight": 0.0}, "loss.aux_weight"),
        ({"optimizer.grad_clip_norm": 1.0}, "optimizer.grad_clip_norm"),
        ({"optimizer.name": "sgd"}, "optimizer.name"),
        ({"model.projector_position": "backbone"}, "model.projector_position"),
    ],
)
def test_structural_change_is_refused_before_the_workdir_is_touched(
    unbroken, data_dir, overrides, named
):
    workdir, _, _ = unbroken
    before = snapshot(workdir)
    other = micro_config(data_dir, **overrides)
    with pytest.raises(checkpointing.WorkdirMismatchError, match=named.replace(".", r"\.")):
        train.train_and_evaluate(other, workdir)
    assert snapshot(workdir) == before  # byte-identical: nothing written, renamed or lost


def test_changing_a_non_structural_field_keeps_the_old_config_json(data_dir, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _sigterm_after(1, m)
        train.train_and_evaluate(micro_config(data_dir), tmp_path)
    train.train_and_evaluate(micro_config(data_dir, log_every_steps=3), tmp_path)
    kept = list(tmp_path.glob("config.*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["log_every_steps"] == 1
    assert json.loads((tmp_path / "config.json").read_text())["log_every_steps"] == 3


def test_non_finite_loss_stops_with_the_step_number_and_saves_nothing(
    data_dir, tmp_path, monkeypatch
):
    def poison(i, batch):
        if i == 1:  # the batch of step 2
            return {**batch, "image": np.full_like(batch["image"], np.nan)}

    _wrap_train_iterator(monkeypatch, poison)
    with pytest.raises(train.NonFiniteLossError, match="at step 2") as e:
        train.train_and_evaluate(micro_config(data_dir), tmp_path)
    assert "nothing was saved" in str(e.value)
    ckpts = tmp_path / "checkpoints"
    assert not ckpts.exists() or not any(ckpts.iterdir())


def test_validation_error_names_the_field_before_anything_runs(data_dir, tmp_path):
    config = micro_config(data_dir, batch_size=12)
    with pytest.raises(config_lib.ConfigError, match="batch_size"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "config.json").exists()


def _cli(*args, timeout=600):
    """`python -m msc_seg.main ARGS` with this process's devices and compilation cache."""
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cache = jax.config.jax_compilation_cache_dir
    return subprocess.run(
        [sys.executable, "-m", "msc_seg.main", f"--compile_cache={cache}", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_eval_with_the_workdir_alone_reproduces_the_training_miou(unbroken):
    workdir, _, trained = unbroken
    table = (workdir / "eval_4.json").read_bytes()
    done = _cli("--mode=eval", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"config: {workdir}/config.json (no overrides)" in done.stdout
    assert (workdir / "eval_4.json").read_bytes() == table  # same protocol, same numbers
    assert json.loads(table)["mIoU"] == pytest.approx(trained["mIoU"], abs=0)


def test_eval_with_another_protocol_writes_its_own_file(unbroken):
    workdir, _, _ = unbroken
    table = (workdir / "eval_4.json").read_bytes()
    done = _cli("--mode=eval", f"--workdir={workdir}", "--config.eval.protocol.flip=True")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval.protocol.flip: False -> True" in done.stdout
    assert (workdir / "eval_4_whole_flip_first16.json").exists()  # eval.max_examples=16
    assert (workdir / "eval_4.json").read_bytes() == table  # the plain evaluation is kept


def test_predict_with_the_workdir_alone(unbroken, tmp_path):
    from PIL import Image

    workdir, _, _ = unbroken
    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 56)).save(tmp_path / "in" / "a.png")
    done = _cli(
        "--mode=predict",
        f"--workdir={workdir}",
        f"--images={tmp_path / 'in'}",
        f"--output={tmp_path / 'out'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "a_ids.png").exists()


def test_rerunning_a_finished_run_says_so_and_writes_nothing(unbroken, capsys):
    workdir, config, trained = unbroken
    before = snapshot(workdir)
    results = train.train_and_evaluate(config, workdir)
    assert "already at total_steps=4; nothing to do (use --mode=eval" in capsys.readouterr().out
    assert results["mIoU"] == pytest.approx(trained["mIoU"]) and results["step"] == 4
    assert snapshot(workdir) == before


def test_a_checkpoint_tree_no_config_field_explains_is_refused(unbroken, data_dir, tmp_path):
    """config.json says contrastive off (edited by hand), the checkpoint has projectors: the
    comparison with the checkpoint's own tree refuses, naming the paths."""
    import shutil

    workdir, _, _ = unbroken
    shutil.copytree(workdir, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    saved["loss"]["contrastive"]["weight"] = 0.0
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    before = snapshot(tmp_path / "run")
    other = micro_config(data_dir, **{"loss.contrastive.weight": 0.0, "total_steps": 8})
    with pytest.raises(
        checkpointing.WorkdirMismatchError, match="only in the checkpoint: .*params/projectors"
    ):
        train.train_and_evaluate(other, tmp_path / "run")
    assert snapshot(tmp_path / "run") == before


def test_resumed_steps_have_one_metrics_row_each(data_dir, tmp_path):
    from msc_seg import reporting

    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4))
    )
    reporter = reporting.Reporter(tmp_path, 4)
    reporter.drop_rows_after(2)  # resumed from step 2: rows 3 and 4 will be written again
    reporter.write_scalars(3, {"loss": 0.5}, progress=False)
    reporter.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 0.5
    old = [json.loads(x) for x in (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()]
    assert [r["step"] for r in old] == [3, 4]
