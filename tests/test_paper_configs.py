"""Every config in configs/ validates, builds its full-size model, and trains one step in tiny form.

"Tiny form" = the same config (dataset, losses, optimizer, schedule, class weights, contrastive
settings) with the backbone swapped for its test-sized variant, smaller crops and channels, and a
synthetic batch (the real datasets are not needed to prove that the recipe's step runs).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
from flax import nnx

from msc_seg import config_lib, experiment, recipes, train_state
from msc_seg.data import registry

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"

# (config file, :arg) pairs: every file, plus every value of its model/dataset arguments.
CASES = [(p.stem, None) for p in sorted(CONFIG_DIR.glob("*.py"))]
CASES += [("ade20k_upernet", f"backbone={b}") for b in ("swin_s", "swin_b", "swin_l")]
CASES += [("ade20k_upernet", "aux=mmseg")]
CASES += [(f"cadis_{m}", f"exp={e}") for m in ("hrnet", "deeplabv3") for e in (2, 3)]
CASES += [("cityscapes_deeplabv3", "taps=3"), ("ade20k_ocrnet_hrnet", "contrastive=0")]
# The paper's configs (demo.py and camvid.py are CPU-sized demonstrations, not paper models).
PAPER_CASES = [c for c in CASES if c[0] not in ("demo", "camvid")]

TINY_BACKBONES = {
    "hrnet_w48": "hrnet_tiny_test",
    "hrnet_w18": "hrnet_tiny_test",
    "resnet101": "resnet_tiny_test",
    "resnet50": "resnet_tiny_test",
    "swin_t": "swin_micro_test",
    "swin_s": "swin_micro_test",
    "swin_b": "swin_micro_test",
    "swin_l": "swin_micro_test",
}


def load_config(name: str, arg: str | None = None):
    path = CONFIG_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def data_devices(config, available: int = 8) -> int:
    """The largest device count <= available that divides the global and eval batches."""
    return max(
        n
        for n in range(1, available + 1)
        if config.batch_size % n == 0 and config.eval.batch_size % n == 0
    )


def tiny_form(config):
    """The config with a test-sized model, 1/8 crops, two contrastive groups per batch, and
    every other field (losses, optimizer, schedule, class weights, sampling) unchanged."""
    c = config.copy_and_resolve_references()
    c.model.backbone = TINY_BACKBONES.get(c.model.backbone, c.model.backbone)
    tiny = dict(
        window_size=4,
        embedding_dim=16,
        decoder_channels=32,
        aux_channels=16,
        aspp_channels=16,
        ocr_channels=32,
        key_channels=16,
    )
    for field, value in tiny.items():  # each model's section holds its own arguments only
        if field in c.model:
            c.model[field] = value
    c.model_init = ""
    c.dataset.train.crop_size = tuple(max(32, v // 8) for v in c.dataset.train.crop_size)
    c.loss.contrastive.max_total = 512
    c.loss.contrastive.max_views = 64
    c.batch_size = 2 * c.loss.contrastive.images_per_group
    c.eval.batch_size = c.batch_size
    c.mesh.data = 2  # one contrastive group per device: still the sharded path
    return c


@pytest.mark.parametrize(("name", "arg"), CASES)
def test_config_validates_on_a_device_count_that_divides_its_batch(name, arg):
    config = load_config(name, arg)
    facts = config_lib.RuntimeFacts(num_devices=data_devices(config))
    # The full-size model is built (abstractly) by the next test: only its arguments here.
    experiment.validate(config, facts, check_model=False)
    assert json.loads(config_lib.to_json(config))["dataset"]["name"] == config.dataset.name


@pytest.mark.parametrize(("name", "arg"), PAPER_CASES)
def test_config_builds_its_full_size_model_with_one_projector_per_scale_weight(name, arg):
    config = load_config(name, arg)
    num_classes = registry.get_dataset_spec(config.dataset.name).num_classes
    model = experiment.abstract_model(config, num_classes)
    params = nnx.state(model, nnx.Param)
    assert train_state.count_params(params) > 20_000_000  # every paper model is 27M-230M
    projectors = getattr(model, "projectors", None)
    if config.loss.contrastive.weight > 0:
        assert len(projectors) == len(config.loss.contrastive.scale_weights)
    else:
        assert not projectors


def test_unrelated_config_argument_is_refused_naming_it():
    with pytest.raises(config_lib.ConfigError, match="'exp' does not apply"):
        load_config("cityscapes_hrnet", "exp=2")


def test_cadis_experiment_outside_1_to_3_is_refused():
    with pytest.raises(config_lib.ConfigError, match="exp=4"):
        load_config("cadis_hrnet", "exp=4")


def test_cityscapes_configs_weight_the_cross_entropy_by_class():
    for name in ("cityscapes_hrnet", "cityscapes_ocrnet_hrnet", "cityscapes_deeplabv3"):
        weights = load_config(name).loss.class_weights
        assert tuple(weights) == recipes.CITYSCAPES_CLASS_WEIGHTS
        assert len(weights) == registry.get_dataset_spec("cityscapes").num_classes


@pytest.mark.parametrize(("arg", "expected"), [(None, 62_404_838), ("aux=mmseg", 61_519_846)])
def test_ade20k_upernet_reproduces_the_released_parameter_count(arg, expected):
    """The authors' released UPerNet-Swin-T (aux head on stage 3 with a conv bias, projectors,
    150 classes) has 62,404,838 training parameters; the mmseg / HF aux head 61,519,846."""
    config = load_config("ade20k_upernet", arg)
    model = experiment.abstract_model(config, 150)
    assert train_state.count_params(nnx.state(model, nnx.Param)) == expected


def test_unknown_aux_head_variant_is_refused_naming_the_choices():
    with pytest.raises(config_lib.ConfigError, match="aux='fpn'.*mmseg.*released"):
        load_config("ade20k_upernet", "aux=fpn")
