"""The train step's XLA options: on CPU the memory-optimised scheduler (a smaller buffer plan for
the paper's steps) and the elemental emitters (faster compiles, a smaller executable), nothing on
other platforms, and never an option this jaxlib refuses."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msc_seg import experiment
from msc_seg import mesh as mesh_lib

MEMORY_AND_ELEMENTAL = {**experiment.CPU_MEMORY_SCHEDULER, **experiment.CPU_ELEMENTAL_EMITTERS}


def test_cpu_train_step_gets_the_memory_scheduler_and_elemental_emitters_this_jaxlib_accepts():
    options = experiment.train_step_compiler_options(
        mesh_lib.make_mesh(1), "memory", emitters="elemental"
    )
    # Asserted, not assumed: a jaxlib that renamed an option would drop it silently at run time
    # (see _cpu_option_supported); the suite says so instead.
    assert options == MEMORY_AND_ELEMENTAL
    fn = jax.jit(lambda x: jnp.tanh(x) @ x, compiler_options=options)
    np.testing.assert_allclose(np.asarray(fn(jnp.eye(3))), np.tanh(1.0) * np.eye(3), rtol=1e-6)


def test_options_reach_xla_a_bad_value_is_refused():
    """What proves compiler_options are passed to XLA (not ignored): a bad value fails."""
    fn = jax.jit(lambda x: x + 1, compiler_options={"xla_cpu_scheduler_type": "NO_SUCH_TYPE"})
    with pytest.raises(Exception, match="xla_cpu_scheduler_type"):
        fn(jnp.ones(2))


def test_auto_is_memory_from_one_512_crop_per_device_on_and_concurrency_below():
    mesh = mesh_lib.make_mesh(1)
    paper = 2 * 512 * 512  # the paper's crop at batch 2 on one device
    options = experiment.train_step_compiler_options
    memory = experiment.CPU_MEMORY_SCHEDULER
    assert options(mesh, "auto", pixels_per_device=paper, emitters="fusion") == memory
    assert options(mesh, "auto", pixels_per_device=512 * 512, emitters="fusion") == memory
    assert options(mesh, "auto", pixels_per_device=4 * 64**2, emitters="fusion") == {}
    # "memory" asked for explicitly holds for any size.
    assert options(mesh, "memory", pixels_per_device=1, emitters="fusion") == memory


def test_concurrency_scheduler_and_fusion_emitters_are_xla_defaults_no_options():
    mesh = mesh_lib.make_mesh(1)
    options = experiment.train_step_compiler_options
    assert options(mesh, "concurrency", emitters="fusion") == {}
    assert options(mesh, "memory", emitters="fusion") == experiment.CPU_MEMORY_SCHEDULER
    assert options(mesh, "concurrency", emitters="elemental") == experiment.CPU_ELEMENTAL_EMITTERS


def test_auto_emitters_are_elemental_for_small_steps_and_fusion_from_one_512_crop_on():
    mesh = mesh_lib.make_mesh(1)
    options = experiment.train_step_compiler_options
    assert options(mesh, "concurrency", pixels_per_device=4 * 64**2) == (
        experiment.CPU_ELEMENTAL_EMITTERS
    )
    assert options(mesh, "concurrency", pixels_per_device=2 * 512 * 512) == {}
    # "elemental" asked for explicitly holds for any size.
    assert options(mesh, "concurrency", pixels_per_device=2 * 512 * 512, emitters="elemental") == (
        experiment.CPU_ELEMENTAL_EMITTERS
    )


def test_elemental_emitters_compute_what_the_fusion_emitters_compute():
    """The option changes how XLA emits code, not what it computes (float rounding aside)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 24)), jnp.float32)

    def f(x):
        return jax.nn.log_softmax(jnp.tanh(x) * 3.0, axis=-1).sum(0) + jnp.max(x, axis=0)

    fused = jax.jit(f)(x)
    elemental = jax.jit(f, compiler_options=experiment.CPU_ELEMENTAL_EMITTERS)(x)
    np.testing.assert_allclose(np.asarray(elemental), np.asarray(fused), rtol=1e-6, atol=1e-6)


def test_recipe_picks_the_scheduler_with_the_smaller_measured_plan_per_swin():
    from msc_seg import recipes

    picks = {
        b: recipes.paper_config("upernet", "ade20k_swin", f"backbone={b}").xla_cpu_scheduler
        for b in ("swin_t", "swin_s", "swin_b", "swin_l")
    }
    assert picks == {
        "swin_t": "auto",
        "swin_s": "concurrency",
        "swin_b": "concurrency",
        "swin_l": "concurrency",
    }
    assert recipes.paper_config("hrnet", "ade20k", None).xla_cpu_scheduler == "auto"


def test_recipe_picks_elemental_emitters_for_swin_t_only():
    from msc_seg import recipes

    picks = {
        b: recipes.paper_config("upernet", "ade20k_swin", f"backbone={b}").xla_cpu_emitters
        for b in ("swin_t", "swin_s", "swin_b", "swin_l")
    }
    assert picks == {"swin_t": "elemental", "swin_s": "auto", "swin_b": "auto", "swin_l": "auto"}
    for model, dataset in (("hrnet", "ade20k"), ("deeplabv3", "ade20k")):
        assert recipes.paper_config(model, dataset, None).xla_cpu_emitters == "auto"


def test_unknown_scheduler_is_a_config_error_naming_the_field():
    from msc_seg import config_lib

    c = config_lib.base_config()
    c.xla_cpu_scheduler = "fast"
    with pytest.raises(config_lib.ConfigError, match="xla_cpu_scheduler"):
        config_lib.validate(c, experiment.runtime_facts())


def test_unknown_emitters_is_a_config_error_naming_the_field():
    from msc_seg import config_lib

    c = config_lib.base_config()
    c.xla_cpu_emitters = "llvm"
    with pytest.raises(config_lib.ConfigError, match="xla_cpu_emitters"):
        config_lib.validate(c, experiment.runtime_facts())


def test_non_cpu_mesh_gets_no_cpu_options():
    gpu = types.SimpleNamespace(platform="gpu")
    mesh = types.SimpleNamespace(devices=np.asarray([gpu, gpu], dtype=object))
    assert experiment.train_step_compiler_options(mesh) == {}


def test_an_option_this_jaxlib_refuses_is_dropped(monkeypatch):
    monkeypatch.setattr(
        experiment, "CPU_MEMORY_SCHEDULER", {"xla_cpu_scheduler_type": "NO_SUCH_TYPE"}
    )
    experiment._cpu_option_supported.cache_clear()
    try:
        options = experiment.train_step_compiler_options(
            mesh_lib.make_mesh(1), "memory", emitters="elemental"
        )
        assert options == experiment.CPU_ELEMENTAL_EMITTERS
    finally:
        experiment._cpu_option_supported.cache_clear()


def test_build_train_parts_compiles_the_step_with_these_options(monkeypatch):
    """The train step's jit gets train_step_compiler_options of the config's fields and of its
    crop pixels per device: a refused value there makes its compile fail, naming the option (a
    tiny DeepLabV3 step; only traced, never run)."""
    from test_mixed_precision import K, tiny_config

    bad = {"xla_cpu_scheduler_type": "NO_SUCH_TYPE"}
    calls = []

    def options(*args, **kwargs):
        calls.append((args, kwargs))
        return bad

    monkeypatch.setattr(experiment, "train_step_compiler_options", options)
    config = tiny_config("deeplabv3", "float32")
    config.xla_cpu_scheduler, config.xla_cpu_emitters = "memory", "fusion"
    mesh = mesh_lib.make_mesh(1)
    parts = experiment.build_train_parts(config, K, mesh)
    h, w = config.dataset.train.crop_size
    assert calls == [
        (
            (mesh, "memory"),
            {"pixels_per_device": h * w * config.batch_size, "emitters": "fusion"},
        )
    ]
    batch = {
        "image": jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
        "label": jax.ShapeDtypeStruct((2, 32, 32), jnp.int32),
    }
    lowered = parts.train_step.lower(parts.abstract_state, batch, jax.random.key(0))
    with pytest.raises(Exception, match="xla_cpu_scheduler_type"):
        lowered.compile()
