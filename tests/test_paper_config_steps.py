"""Every config in configs/ runs one real train step in its tiny form (see test_paper_configs).

Marked `slow` (each step is an XLA compile of a whole model + contrastive loss on CPU):
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


@pytest.mark.parametrize(("name", "arg"), TRAIN_CASES)
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
