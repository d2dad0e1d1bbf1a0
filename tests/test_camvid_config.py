"""configs/camvid.py: validates, its arguments switch the contrastive loss and set the budget; the
benchmark that uses it (benchmarks/camvid.py) evaluates every run on the test split. No training."""

import importlib.util
import pathlib
import sys

import pytest

from msc_seg import config_lib, experiment
from msc_seg.data import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_module(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def camvid_config(arg=None):
    return load_module(ROOT / "configs" / "camvid.py", "camvid_config").get_config(arg)


@pytest.mark.parametrize("num_devices", [1, 8])
def test_camvid_config_validates_and_fits_camvid_frames(num_devices):
    c = camvid_config()
    experiment.validate(c, config_lib.RuntimeFacts(num_devices=num_devices))
    spec = registry.get_dataset_spec(c.dataset.name)
    assert spec.name == "camvid" and spec.max_image_shape == (360, 480)
    pad_h, pad_w = c.eval.data.pad_shape
    assert pad_h >= 360 and pad_w >= 480  # whole frames are evaluated, never cropped
    assert (c.model.name, c.model.backbone) == ("upernet", "resnet_tiny_test")
    assert c.loss.contrastive.images_per_group == 4
    assert c.loss.contrastive.max_total == 2000


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.25])
def test_contrastive_argument_sets_the_weight_and_still_validates(weight):
    c = camvid_config(f"contrastive={weight}")
    assert c.loss.contrastive.weight == weight
    assert c.loss.contrastive.cross_scale  # the MS + CS setting includes the cross-scale terms
    experiment.validate(c, config_lib.RuntimeFacts(num_devices=8))


def test_contrastive_zero_is_ce_only_and_default_is_ms_cs():
    assert camvid_config("contrastive=0").loss.contrastive.weight == 0
    assert camvid_config().loss.contrastive.weight > 0


@pytest.mark.parametrize("steps", [10, 300, 5000])
def test_steps_argument_sets_the_budget_and_cadences(steps):
    c = camvid_config(f"steps={steps}")
    experiment.validate(c, config_lib.RuntimeFacts(num_devices=8))
    assert c.total_steps == steps
    assert c.eval_every_steps == steps  # one evaluation: the last step's
    assert 0 < c.checkpoint_every_steps <= steps
    assert 0 <= c.schedule.warmup_steps < steps


def test_unknown_argument_is_named():
    with pytest.raises(config_lib.ConfigError, match="'crop'"):
        camvid_config("crop=128")


def test_benchmark_runs_evaluate_the_last_step_on_test():
    bench = load_module(ROOT / "benchmarks" / "camvid.py", "camvid_benchmark")
    args = bench.parse_args(["--steps", "7", "--seeds", "3", "--data_dir", "/d"])
    ce, ms = bench.SETTINGS
    assert (ce.contrastive_weight, ms.contrastive_weight) == (0.0, 0.1)
    for setting in (ce, ms):
        cmd = bench.train_command(setting, 3, 7, "/w", args)
        assert f"--config={bench.CONFIG}:steps=7,contrastive={setting.contrastive_weight}" in cmd
        for flag in (
            "--config.eval.data.split=test",
            "--config.eval_every_steps=7",
            "--config.total_steps=7",
            "--config.seed=3",
            "--config.dataset.data_dir=/d",
        ):
            assert flag in cmd
    assert "--config.loss.contrastive.cross_scale=True" in bench.train_command(ms, 3, 7, "/w", args)
