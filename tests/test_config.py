"""Configs: every file builds and validates; typos and bad values fail with messages naming them."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

from msc_seg import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
FACTS = config_lib.RuntimeFacts(num_devices=8)


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def test_ade20k_upernet_carries_the_paper_recipe():
    c = load(ROOT / "configs" / "ade20k_upernet.py")
    assert (c.batch_size, tuple(c.dataset.crop_size), c.total_steps) == (16, (512, 512), 160_401)
    assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.weight_decay) == (
        "adamw",
        6e-5,
        0.01,
    )
    assert (c.schedule.warmup_steps, c.schedule.poly_power) == (1500, 1.0)
    assert (c.loss.aux_weight, c.loss.contrastive.weight) == (0.4, 0.1)
    assert tuple(c.loss.contrastive.scale_weights) == (1.0, 0.7, 0.4, 0.1)
    assert c.loss.contrastive.images_per_group == 4
    assert (
        load(ROOT / "configs" / "ade20k_upernet.py", "backbone=swin_b").model.backbone == "swin_b"
    )


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("batch_size", 12, ["batch_size", "divisible by the 8 devices"]),
        ("dataset.crop_size", (100, 128), ["dataset.crop_size", "multiples of 32"]),
        ("dataset.crop_size", (512, 512), ["dataset.crop_size", "larger than the images"]),
        ("dataset.name", "imagenet", ["dataset.name", "imagenet"]),
        ("model.name", "segformer", ["model.name", "segformer", "upernet"]),
        ("optimizer.name", "lamb", ["optimizer.name", "adamw"]),
        ("loss.contrastive.images_per_group", 3, ["images_per_group", "batch_size (8)"]),
        ("model.pretrained", "/no/such/weights", ["model.pretrained", "import_weights"]),
    ],
)
def test_invalid_values_fail_with_a_message_naming_the_field(field, value, words):
    config = load(ROOT / "configs" / "demo.py")
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config, FACTS)
    for w in words:
        assert w in str(e.value)


def test_config_is_locked_against_new_fields():
    config = load(ROOT / "configs" / "demo.py")
    config.lock()
    with pytest.raises(AttributeError, match="backbon"):
        config.model.backbon = "swin_t"


def run_main(*args):
    return subprocess.run(
        [sys.executable, "-m", "msc_seg.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_rejects_a_typo_in_an_override_naming_the_field(tmp_path):
    r = run_main(
        "--config=configs/demo.py", "--config.model.backbon=swin_t", f"--workdir={tmp_path}"
    )
    assert r.returncode != 0
    assert "backbon" in r.stderr
    assert not (tmp_path / "config.json").exists()


def test_cli_rejects_an_invalid_value_naming_the_field(tmp_path):
    r = run_main(
        "--config=configs/demo.py", "--config.dataset.crop_size=(100,100)", f"--workdir={tmp_path}"
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "dataset.crop_size" in r.stderr and "multiples of 32" in r.stderr


def test_parse_arg_rejects_unknown_keys():
    with pytest.raises(config_lib.ConfigError, match="bacbone"):
        config_lib.parse_arg("bacbone=swin_s", backbone="swin_t")
