"""Every config in configs/ in its tiny form (see test_paper_configs): one config per model family
(model and tiny backbone) runs one real train step; every other config traces its whole train step
(shapes, dtypes, state structure) and runs its loss (the part that depends on its dataset: class
count, class weights, ignore label, contrastive sampling) on random outputs of its model's shapes.
A real step of each further config would compile the same model again: OCRNet's three other
datasets alone took 252 s of the suite on a 2-core CPU.

Marked `slow` (each real step is an XLA compile of a whole model + contrastive loss on CPU):
`./run.sh test` (and CI) run them; `./run.sh test -m "not slow"` skips them in a quick loop.
Kept in its own file so that pytest-xdist (--dist=loadfile) runs it beside tests/test_train.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_paper_configs import CASES, load_config, tiny_form

from msc_seg import config_lib, experiment
from msc_seg import mesh as mesh_lib
from msc_seg.train_step import forward_for_loss

pytestmark = pytest.mark.slow


def synthetic_batch(config, num_classes: int, seed: int = 0) -> dict:
    """Normalised noise images and blocky labels with every few pixels ignored."""
    rng = np.random.default_rng(seed)
    h, w = config.dataset.train.crop_size
    b = config.batch_size
    blocks = rng.integers(0, num_classes, size=(b, h // 8, w // 8))
    label = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.int32)
    label[:, ::7, :] = -1
    image = rng.normal(size=(b, h, w, 3)).astype(np.float32)
    return {"image": image, "label": label}


TRAIN_CASES = [c for c in CASES if c[1] is None]  # every config file once
# One per (model, tiny backbone): demo and camvid share upernet/resnet_tiny_test, ade20k_upernet
# is the Swin one; the other families' ADE20K config where there is one.
REAL_STEP = (
    "demo",
    "ade20k_upernet",
    "ade20k_deeplabv3",
    "ade20k_ocrnet_hrnet",
    "cityscapes_hrnet",
)
REAL_STEP_CASES = [c for c in TRAIN_CASES if c[0] in REAL_STEP]
TRACED_CASES = [c for c in TRAIN_CASES if c[0] not in REAL_STEP]


def test_every_model_family_has_one_config_with_a_real_step():
    def family(name):
        c = tiny_form(load_config(name))
        return c.model.name, c.model.backbone

    assert len(REAL_STEP_CASES) == len(REAL_STEP)
    real = {family(name) for name, _ in REAL_STEP_CASES}
    assert {family(name) for name, _ in TRACED_CASES} <= real
    assert len(real) == len(REAL_STEP)


@pytest.mark.parametrize(("name", "arg"), REAL_STEP_CASES)
def test_config_runs_one_train_step_in_tiny_form(name, arg):
    config = tiny_form(load_config(name, arg))
    spec = experiment.validate(config, config_lib.RuntimeFacts(num_devices=jax.device_count()))
    num_classes = spec.num_classes
    mesh = mesh_lib.make_mesh(config.mesh.data)
    parts = experiment.build_train_parts(config, num_classes, mesh)
    state = parts.create_state()
    batch = mesh_lib.host_batch_to_global(synthetic_batch(config, num_classes), mesh)
    before = jax.tree.map(np.asarray, state.params)
    new_state, metrics = parts.train_step(state, batch, jax.random.key(config.seed))
    assert int(new_state.step) == 1
    assert float(metrics["nonfinite"]) == 0.0
    assert np.isfinite(float(metrics["loss"]))
    if config.loss.contrastive.weight > 0:
        assert float(metrics["loss_contrastive"]) > 0.0
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), before, jax.tree.map(np.asarray, new_state.params)
    )
    assert any(jax.tree.leaves(changed))


@pytest.mark.parametrize(("name", "arg"), TRACED_CASES)
def test_config_traces_its_train_step_and_runs_its_loss_in_tiny_form(name, arg):
    config = tiny_form(load_config(name, arg))
    spec = experiment.validate(config, config_lib.RuntimeFacts(num_devices=jax.device_count()))
    mesh = mesh_lib.make_mesh(config.mesh.data)
    parts = experiment.build_train_parts(config, spec.num_classes, mesh)
    batch = synthetic_batch(config, spec.num_classes)
    state = parts.abstract_state
    new_state, metrics = jax.eval_shape(parts.train_step, state, batch, jax.random.key(0))
    same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), new_state, state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state) and all(jax.tree.leaves(same))
    assert metrics["loss"].shape == () and metrics["nonfinite"].shape == ()

    objective = parts.objective
    align = {}

    def forward(state, images):
        model = parts.model_def.merge(state.params, state.batch_stats)
        outputs, align["corners"] = forward_for_loss(model, images, objective.needs_embeddings)
        return outputs

    shapes = jax.eval_shape(forward, state, batch["image"])
    rng = np.random.default_rng(1)
    outputs = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    loss, loss_metrics = jax.jit(
        lambda o, labels, key: objective(o, labels, key, align_corners=align["corners"])
    )(outputs, batch["label"], jax.random.key(config.seed))
    assert np.isfinite(float(loss)) and float(loss) > 0.0
    if config.loss.contrastive.weight > 0:
        assert float(loss_metrics["loss_contrastive"]) > 0.0
