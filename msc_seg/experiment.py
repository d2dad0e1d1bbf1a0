"""A config becomes the objects of a run here, once; nothing below this module reads a config.

    config --validate--> spec, model builder, (tx, schedule), objective, protocol
           --build-----> Experiment: mesh, TrainParts (state factory + jitted train step),
                         jitted eval step, checkpointer, reporter, data iterators

Each config section is passed on as the keyword arguments of what it configures (see
config_lib); an `ArgumentError` raised by that function is re-raised as a `ConfigError` naming the
config field. train.py (the loop), main.py (the modes), the benchmarks and the tests all build
their runs with these functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import os
import pathlib
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from msc_seg import (
    checkpointing,
    config_lib,
    embedding_views,
    evaluate,
    inference,
    optim,
    reporting,
    visualize,
)
from msc_seg import mesh as mesh_lib
from msc_seg.errors import ArgumentError, ConfigError
from msc_seg.losses.contrastive import ContrastiveOptions, contrastive_loss_for_batch
from msc_seg.losses.total import Objective, make_objective
from msc_seg.train_state import ModelDef, TrainState, make_state_factory
from msc_seg.train_step import make_train_step

# Segmentor arguments the experiment sets itself (from the dataset and the objective).
DERIVED_MODEL_ARGS = ("num_classes", "use_projectors", "use_aux", "param_dtype", "rngs")


@contextlib.contextmanager
def config_section(section: str, renames: dict[str, str] | None = None):
    """Turns an ArgumentError raised inside into a ConfigError naming `section.argument` (or
    the field `renames[argument]`)."""
    try:
        yield
    except ArgumentError as e:
        field = (renames or {}).get(e.argument)
        if field is None:
            raise e.for_field(section) from None
        raise ConfigError(f"config field `{field}` = {e.value!r}: {e.what_to_do}") from None


# ---------------------------------------------------------------------------------------------
# One builder per config section.


def resolve_data_dir(config: ml_collections.ConfigDict) -> str:
    """dataset.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if config.dataset.data_dir:
        return str(pathlib.Path(config.dataset.data_dir).expanduser())
    return os.environ.get("TFDS_DATA_DIR", str(pathlib.Path("~/tensorflow_datasets").expanduser()))


def dataset_spec(config: ml_collections.ConfigDict):
    """The registry's DatasetSpec of `dataset.name` (registering `dataset.spec_file` first)."""
    from msc_seg.data import registry, user_datasets

    d = config.dataset
    if d.spec_file:
        try:
            described = user_datasets.register_dataset_file(d.spec_file).name
        except ValueError as e:
            raise config_lib._err("dataset.spec_file", d.spec_file, str(e)) from None
        if described != d.name:
            raise config_lib._err(
                "dataset.name",
                d.name,
                f"differs from the dataset {described!r} that dataset.spec_file describes; "
                f"set dataset.name={described}",
            )
    try:
        return registry.get_dataset_spec(d.name)
    except ValueError as e:
        raise config_lib._err("dataset.name", d.name, str(e)) from None


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    with config_section("schedule"):
        return optim.make_warmup_poly_schedule(total_steps=config.total_steps, **config.schedule)


def make_tx(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, schedule), built once and without parameters."""
    schedule = make_schedule(config)
    kwargs = dict(config.optimizer)
    name = kwargs.pop("name")
    if name == "sgd":  # Adam's betas mean nothing to SGD (and momentum nothing to AdamW)
        kwargs.pop("b1", None), kwargs.pop("b2", None)
    else:
        kwargs.pop("momentum", None)
    kwargs["no_decay_patterns"] = tuple(kwargs.get("no_decay_patterns", ()))
    with config_section("optimizer"):
        return optim.make_optimizer(name, schedule, **kwargs), schedule


def make_contrastive_options(config: ml_collections.ConfigDict) -> ContrastiveOptions:
    kwargs = dict(config.loss.contrastive)
    kwargs.pop("weight")
    with config_section("loss.contrastive"):
        try:
            return ContrastiveOptions(**kwargs)
        except TypeError as e:
            raise _unknown_fields_error("loss.contrastive", kwargs, ContrastiveOptions) from e


def class_weights(
    config: ml_collections.ConfigDict, num_classes: int, *, for_training: bool = True
) -> tuple[float, ...]:
    """`loss.class_weights` as K floats (or () = unweighted).

    A list is taken as it is. A scheme name ("inverse_freq", "median_freq", "enet"; formulas in
    losses/class_weights.py) is computed from the train split's counts in the prepared dataset's
    dataset_stats.json; outside training (eval, predict: no loss is computed) it gives ().
    """
    value = config.loss.class_weights
    scheme = config_lib.class_weight_scheme(value)
    if scheme is None:
        return tuple(float(w) for w in value or ())
    if not for_training:
        return ()
    from msc_seg.data import stats as stats_lib

    spec = dataset_spec(config)
    split = config.dataset.train.split or spec.train_split
    data_dir = resolve_data_dir(config)
    path = stats_lib.stats_path(spec, data_dir)
    version = path.stat().st_mtime_ns if path.exists() else 0  # a rewritten file is read again
    weights = _weights_from_stats(spec, data_dir, split, scheme, version)
    if len(weights) != num_classes:  # a caller whose class count is not the dataset's
        raise config_lib._err(
            "loss.class_weights",
            value,
            f"gives {len(weights)} weights ({spec.name}) for a model of {num_classes} classes",
        )
    return weights


@functools.lru_cache(maxsize=8)
def _weights_from_stats(spec, data_dir: str, split: str, scheme: str, version: int):
    """Computed once per (dataset, split, scheme, file version); prints which classes get
    weight 0."""
    del version  # only a cache key
    from msc_seg.data import stats as stats_lib
    from msc_seg.losses.class_weights import class_weights as weights_of

    stats = stats_lib.load_stats(spec, data_dir)
    rerun = (
        f"run `python -m msc_seg.data.prepare --dataset={spec.name} --data_dir={data_dir} "
        "--stats` first"
    )
    if stats is None or not stats.fresh:
        path = stats_lib.stats_path(spec, data_dir)
        why = "does not exist" if stats is None else "was computed for another class list"
        raise config_lib._err(
            "loss.class_weights", scheme, f"needs the class counts in {path}, which {why}; {rerun}"
        )
    names = stats_lib.split_names(split)
    missing = [n for n in names if n not in stats.splits]
    if missing or not names:
        raise config_lib._err(
            "loss.class_weights",
            scheme,
            f"{stats.path} has no counts of split {split!r} (dataset.train.split); splits: "
            f"{', '.join(stats.splits)}",
        )
    pixels = sum(np.asarray(stats.splits[n].class_pixels, np.int64) for n in names)
    image_pixels = sum(np.asarray(stats.splits[n].class_image_pixels, np.int64) for n in names)
    try:
        weights = weights_of(scheme, pixels, image_pixels)
    except ValueError as e:
        raise config_lib._err("loss.class_weights", scheme, f"{e} ({split!r}); {rerun}") from None
    zero = [spec.class_names[c] for c in np.flatnonzero(pixels == 0)]
    if zero:
        reporting.log_and_print(
            f"note: loss.class_weights={scheme}: {len(zero)} classes have 0 pixels in split "
            f"{split!r} and get weight 0: {', '.join(zero)}"
        )
    return tuple(float(w) for w in weights)


def build_objective(
    config: ml_collections.ConfigDict, num_classes: int, *, for_training: bool = True
) -> Objective:
    """CE + aux CE + contrastive, from `loss` (the contrastive loss only when its weight > 0).

    for_training=False (eval, predict) leaves out class weights computed from the dataset's
    stats (no loss is computed there; see `class_weights`).
    """
    loss = config.loss
    contrastive = None
    if loss.contrastive.weight > 0:
        contrastive = functools.partial(
            contrastive_loss_for_batch,
            num_classes=num_classes,
            options=make_contrastive_options(config),
        )
    renames = {
        "aux_weight": "loss.aux_weight",
        "class_weights": "loss.class_weights",
        "contrastive_weight": "loss.contrastive.weight",
    }
    with config_section("loss", renames):
        return make_objective(
            aux_weight=loss.aux_weight,
            class_weights=class_weights(config, num_classes, for_training=for_training),
            contrastive=contrastive,
            contrastive_weight=loss.contrastive.weight,
            num_classes=num_classes,
        )


def build_protocol(config: ml_collections.ConfigDict) -> inference.Protocol:
    p = config.eval.protocol
    with config_section("eval.protocol"):
        return inference.Protocol(
            mode=p.mode,
            window=tuple(int(v) for v in p.window),
            stride=tuple(int(v) for v in p.stride),
            scales=tuple(float(s) for s in p.scales),
            flip=bool(p.flip),
            average=p.average,
        )


def protocol_name(config: ml_collections.ConfigDict) -> str:
    """A short name of the eval protocol: 'whole' or 'slide', '_ms' with test-time scales other
    than (1.0,), '_flip' with flipping. Names --mode=eval's TensorBoard run and tags."""
    p = config.eval.protocol
    name = str(p.mode)
    if tuple(float(s) for s in p.scales) != (1.0,):
        name += "_ms"
    return name + ("_flip" if p.flip else "")


def embedding_projection(config: ml_collections.ConfigDict, objective: Objective) -> str | None:
    """The 2-D projection of the evaluations' embedding views ('pca' or 'tsne'), or None when
    they are off: `eval.embedding_plots` False, or no projectors (contrastive loss off)."""
    e = config.eval
    if e.embedding_projection not in embedding_views.PROJECTIONS:
        raise config_lib._err(
            "eval.embedding_projection",
            e.embedding_projection,
            f"must be one of {list(embedding_views.PROJECTIONS)}",
        )
    if not (e.embedding_plots and objective.needs_embeddings):
        return None
    if e.embedding_projection == "tsne" and not embedding_views.tsne_available():
        raise config_lib._err(
            "eval.embedding_projection",
            e.embedding_projection,
            "needs scikit-learn, which is not installed: `pip install scikit-learn`, or use "
            "pca (or eval.embedding_plots=False)",
        )
    return e.embedding_projection


def protocol_tag(config) -> str:
    """A short, stable name of an evaluation protocol (config or config dict): what decides the
    numbers (split, resizes, windows, scales, flip, averaging, max_examples), e.g.
    'slide512x512s341x341_ms0.5-1-1.5_flip'. Evaluations whose tags differ write different
    eval_<step>_<tag>.json files."""
    c = config if isinstance(config, dict) else config_lib.to_dict(config)
    e = c.get("eval", {})
    data, p = e.get("data", {}), e.get("protocol", {})
    parts = [p.get("mode", "whole")]
    if p.get("mode") == "slide":
        window, stride = p.get("window", ()), p.get("stride", ())
        parts[0] += "x".join(map(str, window)) + "s" + "x".join(map(str, stride))
    scales = [float(v) for v in p.get("scales", (1.0,))]
    if scales != [1.0]:
        parts.append("ms" + "-".join(f"{v:g}" for v in scales))
    if p.get("flip"):
        parts.append("flip")
    if p.get("average", "logits") != "logits":
        parts.append(str(p["average"]))
    for key, short in (("resize_short_side", "short"), ("resize_long_side", "long")):
        if data.get(key):
            parts.append(f"{short}{data[key]}")
    if data.get("split"):
        parts.append(str(data["split"]))
    if e.get("max_examples"):
        parts.append(f"first{e['max_examples']}")
    return "_".join(parts).replace("/", "-")


def _parameters(fn) -> dict:
    """The parameters of a function or of a class's __init__ (nnx modules hide theirs)."""
    return dict(inspect.signature(fn.__init__ if inspect.isclass(fn) else fn).parameters)


def _unknown_fields_error(section: str, kwargs: dict, fn) -> ConfigError:
    params = _parameters(fn)
    unknown = sorted(k for k in kwargs if k not in params)
    known = sorted(k for k in params if k not in DERIVED_MODEL_ARGS and k != "self")
    return ConfigError(
        f"config field(s) {', '.join(f'`{section}.{k}`' for k in unknown)} are not arguments of "
        f"{getattr(fn, '__name__', fn)}; its arguments are: {', '.join(known)}"
    )


def segmentor_factory(name: str) -> Callable[..., nnx.Module]:
    from msc_seg.models.segmentor import SEGMENTORS, resolve_segmentor

    if name not in SEGMENTORS:
        raise config_lib._err("model.name", name, f"unknown model; known: {sorted(SEGMENTORS)}")
    return resolve_segmentor(name)


def model_kwargs(
    config: ml_collections.ConfigDict, num_classes: int, objective: Objective
) -> tuple[Callable[..., nnx.Module], dict]:
    """(segmentor class, its keyword arguments): `model` minus `name`, plus what the run derives
    (classes from the dataset, projectors and aux head from the objective, float32 params)."""
    kwargs = dict(config.model)
    factory = segmentor_factory(kwargs.pop("name"))
    params = _parameters(factory)
    derived = sorted(set(kwargs) & set(DERIVED_MODEL_ARGS))
    if derived:
        raise ConfigError(
            f"config field(s) {', '.join(f'model.{k}' for k in derived)} are set by the run "
            "(classes from the dataset, projectors from loss.contrastive.weight, the aux head "
            "from loss.aux_weight); remove them"
        )
    if any(k not in params for k in kwargs):
        raise _unknown_fields_error("model", kwargs, factory)
    for key in ("taps", "pool_scales"):  # JSON / ConfigDict lists -> the tuples modules take
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    if "aspp_dilations" in kwargs:  # () = by output stride
        kwargs["aspp_dilations"] = tuple(kwargs["aspp_dilations"] or ()) or None
    if "dtype" in kwargs:
        try:
            kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
        except TypeError:
            raise config_lib._err(
                "model.dtype", kwargs["dtype"], "must be a dtype name: float32 or bfloat16"
            ) from None
    kwargs.update(num_classes=num_classes, use_projectors=objective.needs_embeddings)
    kwargs["param_dtype"] = jnp.float32
    if "use_aux" in params:
        kwargs["use_aux"] = objective.aux_weight > 0
    return factory, kwargs


def model_builder(
    config: ml_collections.ConfigDict, num_classes: int, objective: Objective
) -> Callable[[jax.Array], nnx.Module]:
    """key -> the configured segmentor, initialised from `key`.

    Under tracing (jit / eval_shape) only the key is traced: the RNG stream counters are kept
    concrete (`ensure_compile_time_eval`), otherwise flax's tracer checks on every counter update
    make building a large model take tens of seconds.
    """
    factory, kwargs = model_kwargs(config, num_classes, objective)

    def build(key: jax.Array) -> nnx.Module:
        with jax.ensure_compile_time_eval(), config_section("model"):
            rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
            try:
                return factory(rngs=rngs, **kwargs)
            except ArgumentError:
                raise
            except ValueError as e:  # a check that does not name its argument
                raise ConfigError(f"config section `model` ({config.model.name}): {e}") from None

    return build


def abstract_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    """The configured model with shapes only (nnx.eval_shape): parameter counts, checks."""
    objective = build_objective(config, num_classes)
    build = model_builder(config, num_classes, objective)
    return nnx.eval_shape(build, jax.random.key(0))


def _check_scale_weights(config, model: nnx.Module, objective: Objective) -> None:
    projectors = getattr(model, "projectors", None)
    if not objective.needs_embeddings or projectors is None:
        return
    scales = len(projectors)
    weights = tuple(config.loss.contrastive.scale_weights)
    if len(weights) != scales:
        raise config_lib._err(
            "loss.contrastive.scale_weights",
            weights,
            f"needs one weight per projected scale ({scales} for model "
            f"'{config.model.name}'), finest first",
        )


# ---------------------------------------------------------------------------------------------
# The train step's parts (what the benchmarks and tests build too).


@dataclasses.dataclass(frozen=True)
class TrainParts:
    """Everything a train step needs, built from one config.

    create_state() -> a fresh replicated TrainState; abstract_state: its shapes and shardings
    (restore target); train_step: jitted (state, batch, key) -> (state, metrics), state donated.
    """

    model_def: ModelDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    objective: Objective
    create_state: Callable[[], TrainState]
    abstract_state: TrainState
    train_step: Callable


def build_train_parts(
    config: ml_collections.ConfigDict, num_classes: int, mesh, *, for_training: bool = True
) -> TrainParts:
    """The model, optimizer, objective, state factory and jitted train step of `config`
    (for_training=False: see `build_objective`)."""
    objective = build_objective(config, num_classes, for_training=for_training)
    tx, schedule = make_tx(config)
    build = model_builder(config, num_classes, objective)
    model_def, create, abstract = make_state_factory(build, tx, mesh, config.seed)
    model = nnx.merge(model_def.graphdef, abstract.params, model_def.rng, abstract.batch_stats)
    _check_scale_weights(config, model, objective)
    step = make_train_step(model_def, tx, objective, schedule=schedule)
    return TrainParts(
        model_def=model_def,
        tx=tx,
        schedule=schedule,
        objective=objective,
        create_state=create,
        abstract_state=abstract,
        train_step=jax.jit(
            step,
            donate_argnums=(0,),
            compiler_options=train_step_compiler_options(
                mesh,
                config.get("xla_cpu_scheduler", "auto"),
                pixels_per_device=int(np.prod(config.dataset.train.crop_size))
                * config.batch_size
                // mesh.size,
                emitters=config.get("xla_cpu_emitters", "auto"),
            ),
        ),
    )


CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
# XLA:CPU's elemental (LLVM IR) emitters in place of its MLIR fusion emitters.
CPU_ELEMENTAL_EMITTERS = {"xla_cpu_use_fusion_emitters": False}


# "auto" (scheduler and emitters): a step of at least one 512x512 crop per device is "large".
AUTO_MIN_PIXELS = 512 * 512


def train_step_compiler_options(
    mesh,
    scheduler: str = "auto",
    *,
    pixels_per_device: int = AUTO_MIN_PIXELS,
    emitters: str = "auto",
) -> dict[str, str | bool]:
    """XLA options of the train step on CPU (config fields `xla_cpu_scheduler` and
    `xla_cpu_emitters`); {} on other platforms. benchmarks/README.md, "Scheduler" and
    "Emitters", has the measurements (512x512, batch 2 is "paper size" below).

    Scheduler: "memory" asks for XLA's memory-optimised scheduler. The default one orders
    operations for concurrency, which a CPU step (each operation already uses every core) gains
    little from, and for most paper models its order keeps more buffers alive (XLA's buffer
    plan: DeepLabV3 7.07 -> 6.57 GiB, HRNet 5.13 -> 4.70, OCRNet 6.10 -> 5.53, UPerNet-Swin-T
    3.85 -> 3.75; but Swin-S/B/L 5.02/6.38/9.57 -> 5.09/6.57/9.98, so configs/ade20k_upernet.py
    keeps "concurrency" for them). "auto" is "memory" from AUTO_MIN_PIXELS crop pixels per
    device on, "concurrency" below: a small step's buffers do not matter, and the memory
    scheduler costs ~20 % more compile CPU on tiny programs (the tests' train steps).

    Emitters: "elemental" compiles the step's fusions with XLA's elemental (LLVM IR) emitters
    instead of its MLIR fusion emitters ("fusion", XLA's default), which build an MLIR context
    and pass pipeline per fusion. Tiny steps compile faster with them (benchmarks/
    tiny_step_compile.py), and the executable is smaller (UPerNet-Swin-T: our idle process
    0.11-0.16 GiB smaller, its peak against PyTorch's 1.02 -> 0.99-1.00, so the recipe picks
    them for Swin-T). But large CNN steps compile far slower (paper size: HRNet 59 -> 177 s,
    OCRNet 67 -> 206 s). "auto" is "elemental" below AUTO_MIN_PIXELS crop pixels per device,
    "fusion" from there on.

    An option this jaxlib refuses (a renamed one) is dropped, not an error in every step."""
    if mesh.devices.flat[0].platform != "cpu":
        return {}
    large = pixels_per_device >= AUTO_MIN_PIXELS
    if scheduler == "auto":
        scheduler = "memory" if large else "concurrency"
    if emitters == "auto":
        emitters = "fusion" if large else "elemental"
    options = {}
    if scheduler == "memory":
        options.update(CPU_MEMORY_SCHEDULER)
    if emitters == "elemental":
        options.update(CPU_ELEMENTAL_EMITTERS)
    return {k: v for k, v in options.items() if _cpu_option_supported(k, v)}


@functools.cache
def _cpu_option_supported(name: str, value) -> bool:
    """Whether this jaxlib's XLA takes option `name` = `value` (an option XLA renames is then
    dropped, not an error in every train step): one compile of a scalar add."""
    try:
        fn = jax.jit(lambda x: x + 1, compiler_options={name: value})
        fn.lower(jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except Exception:  # noqa: BLE001 - any refusal means: compile without it
        return False
    return True


def make_eval_step(config: ml_collections.ConfigDict, model_def: ModelDef, num_classes: int):
    """Jitted (state, batch) -> (confusion matrix [K,K], prediction) of the eval protocol."""
    data = config.eval.data
    step = evaluate.make_eval_step(
        model_def,
        num_classes,
        resize_to_labels=bool(data.resize_short_side or data.resize_long_side),
        protocol=build_protocol(config),
    )
    return jax.jit(step)


# ---------------------------------------------------------------------------------------------
# Validation: every check, before anything is written.


def validate(
    config: ml_collections.ConfigDict,
    facts: config_lib.RuntimeFacts,
    *,
    check_model: bool = True,
    for_training: bool = True,
):
    """Runs every check a run makes before it starts, without allocating any weights.

    Cross-field checks (config_lib), renamed/unknown fields, the dataset, the model's arguments
    (names against the segmentor's signature; with check_model also the constructor's own checks
    and the scale weights, by building the model abstractly), optimizer, schedule, objective and
    eval protocol. Returns the DatasetSpec. Raises ConfigError naming the field. The checks
    against the prepared data are `check_prepared_dataset`'s.
    """
    config_lib.upgrade(config)
    config_lib.validate(config, facts)
    check_model_fields(config)
    spec = dataset_spec(config)
    config_lib.check_against_dataset(config, spec)
    objective = build_objective(config, spec.num_classes, for_training=for_training)
    model_kwargs(config, spec.num_classes, objective)
    if check_model:
        model = nnx.eval_shape(
            model_builder(config, spec.num_classes, objective), jax.random.key(0)
        )
        _check_scale_weights(config, model, objective)
    make_tx(config)
    build_protocol(config)
    embedding_projection(config, objective)
    return spec


def check_batch_fits(config: ml_collections.ConfigDict, spec, data_dir: str) -> None:
    """The train split holds at least one global batch: ConfigError naming batch_size now, not
    an empty epoch later. (That the split exists is `check_prepared_dataset`'s check.)"""
    from msc_seg.data import builders

    split = config.dataset.train.split or spec.train_split
    sizes = builders.split_sizes(spec, data_dir)
    n = sizes.get(split, builders.prepared_builder(spec, data_dir).info.splits[split].num_examples)
    if n < config.batch_size:
        raise config_lib._err(
            "batch_size",
            config.batch_size,
            f"is larger than the {n} examples of split '{split}' of dataset "
            f"'{spec.name}'; use batch_size <= {n}",
        )


def check_model_fields(config: ml_collections.ConfigDict) -> None:
    """model.name, model.dtype and model_init, checked without the dataset (no TensorFlow)."""
    segmentor_factory(config.model.name)
    if "dtype" in config.model:
        try:
            jnp.dtype(config.model.dtype)
        except TypeError:
            raise config_lib._err(
                "model.dtype", config.model.dtype, "must be a dtype name: float32 or bfloat16"
            ) from None
    if config.model_init and not pathlib.Path(config.model_init).exists():
        raise config_lib._err(
            "model_init",
            config.model_init,
            "does not exist; write it with `python -m msc_seg.tools.import_weights` "
            "or set model_init=''",
        )


def check_prepared_dataset(
    config: ml_collections.ConfigDict, spec, data_dir: str, *, for_training: bool = True
) -> list[str]:
    """The start-up checks against the prepared dataset, before the workdir is touched.

    The eval split (and, for training, the train split) exists; the eval canvas and the train
    crop against the largest images (the registry's max_image_shape, else the splits' sizes in
    dataset_stats.json); the label ids seen at prepare time against the class list. ConfigError
    naming the field or the dataset file; returns a one-line note for each check the data cannot
    answer (no stats file).
    """
    from msc_seg.data import builders
    from msc_seg.data import stats as stats_lib

    builder = builders.prepared_builder(spec, data_dir)
    available = sorted(builder.info.splits.keys())
    splits = {
        "train": ("dataset.train.split", config.dataset.train.split or spec.train_split),
        "eval": ("eval.data.split", config.eval.data.split or spec.eval_split),
    }
    for which, (field, split) in splits.items():
        if which == "train" and not for_training:
            continue
        try:
            builders.check_split(builder, spec, split)
        except ValueError:
            raise config_lib._err(
                field,
                split,
                f"dataset '{spec.name}' in {data_dir} has no such split; its splits: "
                f"{', '.join(available)} (or a tfds split expression over them, e.g. "
                "'validation+test')",
            ) from None
    stats = stats_lib.load_stats(spec, data_dir)
    shapes = {
        which: stats_lib.max_image_shape(stats, split) if stats else None
        for which, (_, split) in splits.items()
    }
    notes = config_lib.check_against_dataset(config, spec, shapes)
    if stats is None:
        notes.append(
            f"label ids of '{spec.name}' not checked against its {spec.num_classes} classes: "
            f"no {stats_lib.stats_path(spec, data_dir)} (`python -m msc_seg.data.prepare "
            f"--dataset={spec.name} --data_dir={data_dir} --stats` writes it)"
        )
        return notes
    unknown = stats_lib.unknown_raw_ids(spec, stats)
    if unknown:
        message = stats_lib.unknown_ids_message(spec, unknown)
        if not stats.unknown_ids_accepted:
            raise ConfigError(message)
        notes.append(f"{message} (accepted at prepare: --unknown_label_ids=ignore)")
    return notes


def runtime_facts() -> config_lib.RuntimeFacts:
    return config_lib.RuntimeFacts(jax.device_count(), jax.process_count())


# ---------------------------------------------------------------------------------------------
# A whole run.


@dataclasses.dataclass
class Experiment:
    """The built run: everything train.py's loop and the eval / predict modes use."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    mesh: jax.sharding.Mesh
    spec: object  # data.registry.DatasetSpec
    data_dir: str
    parts: TrainParts
    eval_step: Callable
    checkpointer: checkpointing.Checkpointer | None
    reporter: reporting.Reporter | None
    eval_tag: str = "eval"  # TensorBoard tag prefix of the evaluations ("eval_<protocol>" in eval)
    embedding_sampler: Callable | None = None  # embedding_views.make_embedding_sampler, or None
    embedding_projection: str = "pca"

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def train_batches(self, start_step: int) -> Iterator[dict]:
        """This host's batches from step `start_step` on (the same stream whenever resumed)."""
        from msc_seg.data import pipeline

        train = dict(self.config.dataset.train)
        split = train.pop("split") or self.spec.train_split
        for key in ("crop_size", "scale_range", "aspect_range"):
            train[key] = tuple(train[key])
        return pipeline.make_train_iterator(
            self.spec,
            data_dir=self.data_dir,
            split=split,
            batch_size=self.config.batch_size,  # global: each process reads its rows
            seed=self.config.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            **train,
        )

    def eval_batches(self):
        """This host's eval batches (padded to eval.data.pad_shape, or to their buckets with
        eval.data.bucket_multiple), eval.max_examples applied."""
        from msc_seg.data import pipeline

        data = self.config.eval.data
        e = self.config.eval
        batches = pipeline.make_eval_dataset(
            self.spec,
            data_dir=self.data_dir,
            split=data.split or self.spec.eval_split,
            batch_size=e.batch_size // jax.process_count(),
            pad_shape=tuple(data.pad_shape),
            resize_short_side=data.resize_short_side or None,
            resize_long_side=data.resize_long_side or None,
            bucket_multiple=data.get("bucket_multiple", 0),
            # A bucket holds at least one sliding window.
            bucket_min=tuple(e.protocol.window) if e.protocol.mode == "slide" else (0, 0),
        )
        if e.max_examples:
            batches = itertools.islice(batches, -(-e.max_examples // e.batch_size))
        return batches

    def evaluate(self, state: TrainState, step: int, *, protocol: str = "") -> dict:
        """Evaluates `state` on the eval split with the eval protocol; prints and writes the
        per-class table (eval_<step>[_<protocol>].json) with a progress line every ~10 s and,
        with a reporter, TensorBoard scalars, overlays, the confusion matrix and the embedding
        views (tags prefixed `eval_tag`)."""
        e = self.config.eval
        batches = self.eval_batches()
        total = getattr(batches, "num_examples", None)
        if total is not None and e.max_examples:
            total = min(total, int(e.max_examples))
        first: list[dict] = []  # the first host batch, kept for the embedding views
        cm, images = evaluate.run_evaluation(
            self.eval_step,
            state,
            _keeping_first(batches, first),
            self.mesh,
            num_images=e.num_images_to_log,
            palette=self.spec.palette,
            progress=reporting.PeriodicProgress(total, label=f"eval at step {step}"),
        )
        results = evaluate.report_evaluation(
            cm,
            step,
            self.spec.class_names,
            self.workdir,
            self.reporter,
            images,
            class_groups=self.spec.class_groups,
            tag=self.eval_tag,
            protocol=protocol,
        )
        if self.reporter is not None:
            with reporting.Heartbeat(lambda t: f"drawing the evaluation's figures ... {t}"):
                self._write_eval_views(state, step, cm, first[0])
        return results | {"confusion_matrix": cm}

    def _write_eval_views(self, state: TrainState, step: int, cm, batch: dict) -> None:
        """TensorBoard pictures of an evaluation: the row-normalised confusion matrix and, with
        the embedding sampler, each scale's embedding projection and separability scalars."""
        try:
            if self.reporter.is_main:
                title = f"confusion matrix at step {step} (rows: true class, normalised)"
                image = visualize.confusion_matrix_image(cm, self.spec.class_names, title)
                self.reporter.write_images(step, {f"{self.eval_tag}/confusion_matrix": image[None]})
            if self.embedding_sampler is not None:
                embedding_views.log_embedding_views(
                    self.reporter,
                    step,
                    self.embedding_sampler,
                    state,
                    batch,
                    self.mesh,
                    class_names=self.spec.class_names,
                    palette=self.spec.palette,
                    tag=self.eval_tag,
                    projection=self.embedding_projection,
                )
        except ImportError as e:  # matplotlib missing: the evaluation itself is done and kept
            reporting.log_and_print(f"note: no TensorBoard figures of this evaluation: {e}")

    def close(self) -> None:
        if self.checkpointer is not None:
            with reporting.Heartbeat(lambda t: f"waiting for the checkpoint writes ... {t}"):
                self.checkpointer.wait()
                self.checkpointer.close()
        if self.reporter is not None:
            self.reporter.close()


def _keeping_first(batches, kept: list) -> Iterator[dict]:
    """Yields `batches`, appending the first one to `kept` (no second pass over the data)."""
    for batch in batches:
        if not kept:
            kept.append(batch)
        yield batch


def _prepare_dataset_once(spec, data_dir: str) -> None:
    """Builds the dataset (and its dataset_stats.json) if it is not prepared, as the prepare CLI
    does (the demo builds itself); with several processes process 0 builds it while the others
    wait (two processes building one tfds folder at once would clash)."""
    from msc_seg.data import builders
    from msc_seg.data import stats as stats_lib

    def prepare() -> None:
        if not builders.make_builder(spec, data_dir).is_prepared():
            builders.prepare_dataset(spec, data_dir)
            stats_lib.ensure_stats(spec, data_dir)

    if jax.process_count() > 1:
        from msc_seg import distributed

        if jax.process_index() == 0:
            prepare()
        distributed.barrier(f"dataset {spec.name} prepared")
    else:
        prepare()


def build(config: ml_collections.ConfigDict, workdir, *, mode: str) -> Experiment:
    """The run of `config` in `workdir` for mode "train", "eval" or "predict".

    Everything is checked before the workdir is touched: validation, the workdir's config and
    its newest checkpoint's tree (paths and shapes) against this config's state, the dataset's
    splits. Only then does train write WORKDIR/config.json; eval/predict need the workdir
    (predict needs no prepared dataset).
    """
    workdir = pathlib.Path(workdir) if workdir else None
    for note in config_lib.upgrade(config):
        reporting.log_and_print(f"note: {note}")
    reporting.log_and_print(  # TensorFlow, the dataset and the abstract model: tens of seconds
        f"building the run: dataset {config.dataset.name}, model {config.model.name}"
        f"/{config.model.get('backbone', '-')} ({mode}) ..."
    )
    with reporting.Heartbeat(lambda t: f"building the run ... {t}"):
        return _build(config, workdir, mode)


def _build(config: ml_collections.ConfigDict, workdir, mode: str) -> Experiment:
    training = mode == "train"
    spec = validate(config, runtime_facts(), check_model=False, for_training=training)
    data_dir = resolve_data_dir(config)
    if mode != "predict":  # the data is checked before the workdir is touched
        _prepare_dataset_once(spec, data_dir)
        for note in check_prepared_dataset(config, spec, data_dir, for_training=training):
            reporting.log_and_print(f"note: {note}")
        if training:
            check_batch_fits(config, spec, data_dir)
    mesh = mesh_lib.make_mesh(config.mesh.data)
    # Builds the model (checking its arguments) after the cheap checks above.
    parts = build_train_parts(config, spec.num_classes, mesh, for_training=training)
    current = config_lib.to_dict(config)
    if mode == "eval" and (workdir is None or not workdir.exists()):
        raise FileNotFoundError(f"workdir {workdir} does not exist; train first or fix --workdir")
    if workdir is not None and workdir.exists():
        checkpointing.check_workdir_config(
            workdir,
            current,
            what="this config" if training else "--config",
            abstract_state=parts.abstract_state,
        )
    if training:  # every check passed: only now is the workdir written
        checkpointing.write_workdir_config(workdir, config_lib.to_json(config))
    eval_step = make_eval_step(config, parts.model_def, spec.num_classes)
    checkpointer = (
        checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
        if mode in ("train", "eval")
        else None
    )
    reporter, eval_tag = None, "eval"
    if mode == "train":
        reporter = reporting.Reporter(workdir, config.total_steps)
    elif mode == "eval":  # its own TensorBoard run and tags: training's curves stay as they were
        eval_tag = f"eval_{protocol_name(config)}"
        reporter = _eval_mode_reporter(workdir / "eval" / protocol_name(config), config)
    projection = embedding_projection(config, parts.objective)
    sampler = None
    if projection is not None and reporter is not None:
        sampler = embedding_views.make_embedding_sampler(parts.model_def, spec.num_classes, mesh)
    return Experiment(
        config=config,
        workdir=workdir,
        mesh=mesh,
        spec=spec,
        data_dir=data_dir,
        parts=parts,
        eval_step=eval_step,
        checkpointer=checkpointer,
        reporter=reporter,
        eval_tag=eval_tag,
        embedding_sampler=sampler,
        embedding_projection=projection or "pca",
    )


def _eval_mode_reporter(logdir: pathlib.Path, config) -> reporting.Reporter:
    """--mode=eval's writer in WORKDIR/eval/<protocol>/, no metrics.jsonl. Made on every process
    (the embedding sampler is a collective program: all processes run it or none); its files
    appear at the first write."""
    return reporting.Reporter(logdir, config.total_steps, jsonl=False)
