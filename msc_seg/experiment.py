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
import optax
from flax import nnx

from msc_seg import checkpointing, config_lib, evaluate, inference, optim, reporting
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


def build_objective(config: ml_collections.ConfigDict, num_classes: int) -> Objective:
    """CE + aux CE + contrastive, from `loss` (the contrastive loss only when its weight > 0)."""
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
            class_weights=tuple(loss.class_weights),
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


def build_train_parts(config: ml_collections.ConfigDict, num_classes: int, mesh) -> TrainParts:
    """The model, optimizer, objective, state factory and jitted train step of `config`."""
    objective = build_objective(config, num_classes)
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
        train_step=jax.jit(step, donate_argnums=(0,)),
    )


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
    config: ml_collections.ConfigDict, facts: config_lib.RuntimeFacts, *, check_model: bool = True
):
    """Runs every check a run makes before it starts, without allocating any weights.

    Cross-field checks (config_lib), renamed/unknown fields, the dataset, the model's arguments
    (names against the segmentor's signature; with check_model also the constructor's own checks
    and the scale weights, by building the model abstractly), optimizer, schedule, objective and
    eval protocol. Returns the DatasetSpec. Raises ConfigError naming the field.
    """
    config_lib.upgrade(config)
    config_lib.validate(config, facts)
    spec = dataset_spec(config)
    config_lib.check_against_dataset(config, spec)
    objective = build_objective(config, spec.num_classes)
    model_kwargs(config, spec.num_classes, objective)
    if check_model:
        model = nnx.eval_shape(
            model_builder(config, spec.num_classes, objective), jax.random.key(0)
        )
        _check_scale_weights(config, model, objective)
    make_tx(config)
    build_protocol(config)
    if config.model_init and not pathlib.Path(config.model_init).exists():
        raise config_lib._err(
            "model_init",
            config.model_init,
            "does not exist; write it with `python -m msc_seg.tools.import_weights` "
            "or set model_init=''",
        )
    return spec


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
        """This host's eval batches (padded to eval.data.pad_shape), eval.max_examples applied."""
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
        )
        if e.max_examples:
            batches = itertools.islice(batches, -(-e.max_examples // e.batch_size))
        return batches

    def evaluate(self, state: TrainState, step: int) -> dict:
        """Evaluates `state` on the eval split with the eval protocol; prints and writes the
        per-class table (eval_<step>.json, TensorBoard when training)."""
        e = self.config.eval
        cm, images = evaluate.run_evaluation(
            self.eval_step,
            state,
            self.eval_batches(),
            self.mesh,
            num_images=e.num_images_to_log,
            palette=self.spec.palette,
        )
        results = evaluate.report_evaluation(
            cm,
            step,
            self.spec.class_names,
            self.workdir,
            self.reporter,
            images,
            class_groups=self.spec.class_groups,
        )
        return results | {"confusion_matrix": cm}

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.wait()
            self.checkpointer.close()
        if self.reporter is not None:
            self.reporter.close()


def _prepare_dataset_once(spec, data_dir: str) -> None:
    """Builds the dataset if needed; with several processes process 0 builds it while the
    others wait (two processes building one tfds folder at once would clash)."""
    from msc_seg.data import builders

    if jax.process_count() > 1:
        from msc_seg import distributed

        if jax.process_index() == 0:
            builders.prepare_dataset(spec, data_dir)
        distributed.barrier(f"dataset {spec.name} prepared")
    builders.prepare_dataset(spec, data_dir)


def build(config: ml_collections.ConfigDict, workdir, *, mode: str) -> Experiment:
    """The run of `config` in `workdir` for mode "train", "eval" or "predict".

    Everything is checked before the workdir is touched: validation, then (train) the workdir's
    config against this one. train writes WORKDIR/config.json; eval/predict need the workdir
    (predict needs no prepared dataset).
    """
    workdir = pathlib.Path(workdir) if workdir else None
    for note in config_lib.upgrade(config):
        reporting.log_and_print(f"note: {note}")
    spec = validate(config, runtime_facts(), check_model=False)  # the model is built below
    mesh = mesh_lib.make_mesh(config.mesh.data)
    parts = build_train_parts(config, spec.num_classes, mesh)  # checks the model's arguments
    current = config_lib.to_dict(config)
    if mode == "train":
        checkpointing.check_workdir_config(workdir, current, what="this config")
        checkpointing.write_workdir_config(workdir, config_lib.to_json(config))
    elif workdir is not None:
        if not workdir.exists() and mode == "eval":
            raise FileNotFoundError(
                f"workdir {workdir} does not exist; train first or fix --workdir"
            )
        if workdir.exists():
            checkpointing.check_workdir_config(workdir, current, what="--config")
    data_dir = resolve_data_dir(config)
    if mode != "predict":
        _prepare_dataset_once(spec, data_dir)
    eval_step = make_eval_step(config, parts.model_def, spec.num_classes)
    checkpointer = (
        checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
        if mode in ("train", "eval")
        else None
    )
    reporter = reporting.Reporter(workdir, config.total_steps) if mode == "train" else None
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
    )
