"""Configs: every file builds and validates; typos and bad values fail with messages naming them."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

from msc_seg import config_lib, experiment

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
    assert (c.batch_size, tuple(c.dataset.train.crop_size), c.total_steps) == (
        16,
        (512, 512),
        160_401,
    )
    assert (c.optimizer.name, c.schedule.learning_rate, c.optimizer.weight_decay) == (
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
        ("dataset.train.crop_size", (100, 128), ["dataset.train.crop_size", "multiples of 32"]),
        (
            "dataset.train.crop_size",
            (512, 512),
            ["dataset.train.crop_size", "larger than the images"],
        ),
        ("dataset.name", "imagenet", ["dataset.name", "imagenet"]),
        ("model.name", "segformer", ["model.name", "segformer", "upernet"]),
        ("optimizer.name", "lamb", ["optimizer.name", "adamw"]),
        ("loss.contrastive.images_per_group", 3, ["images_per_group", "batch_size (8)"]),
        ("model_init", "/no/such/weights", ["model_init", "import_weights"]),
        ("loss.contrastive.temperature", 0.0, ["loss.contrastive.temperature", "> 0"]),
        ("schedule.warmup_steps", 400, ["schedule.warmup_steps", "total_steps=400"]),
        ("eval.protocol.mode", "tiles", ["eval.protocol.mode", "whole"]),
        ("model.projector_position", "neck", ["model.projector_position", "fpn"]),
        ("model.decoder_channel", 64, ["model.decoder_channel", "decoder_channels"]),
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
        experiment.validate(config, FACTS)
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
        "--config=configs/demo.py",
        "--config.dataset.train.crop_size=(100,100)",
        f"--workdir={tmp_path}",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "dataset.train.crop_size" in r.stderr and "multiples of 32" in r.stderr


def test_parse_arg_rejects_unknown_keys():
    with pytest.raises(config_lib.ConfigError, match="bacbone"):
        config_lib.parse_arg("bacbone=swin_s", backbone="swin_t")


def test_cli_override_of_a_renamed_field_names_the_new_field(tmp_path):
    r = run_main(
        "--config=configs/demo.py", "--config.dataset.crop_size=(96,96)", f"--workdir={tmp_path}"
    )
    assert r.returncode == 2
    assert "dataset.train.crop_size" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "config.json").exists()


def test_old_config_file_fields_move_to_their_new_names_with_a_note():
    config = load(ROOT / "configs" / "demo.py")
    config.dataset.crop_size = (96, 96)  # an old config file's field (renamed since)
    config.loss.contrastive.max_features_total = 123
    notes = config_lib.upgrade(config)
    assert tuple(config.dataset.train.crop_size) == (96, 96)
    assert config.loss.contrastive.max_total == 123
    assert "crop_size" not in config.dataset
    assert any("dataset.train.crop_size" in n for n in notes) and len(notes) == 2
    experiment.validate(config, FACTS)


def test_unknown_field_in_a_config_file_is_named():
    config = load(ROOT / "configs" / "demo.py")
    config.loss.contrastive.temprature = 0.2
    with pytest.raises(config_lib.ConfigError, match="loss.contrastive.temprature"):
        experiment.validate(config, FACTS)
