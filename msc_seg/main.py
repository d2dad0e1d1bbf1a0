r"""Entry point.

    python -m msc_seg.main --config=configs/ade20k_upernet.py --workdir=DIR [--config.a.b=v]
    python -m msc_seg.main --mode=eval --workdir=DIR [--checkpoint=latest|best|STEP] [--config.x=v]
    python -m msc_seg.main --mode=predict --workdir=DIR --images=IN --output=OUT \
        [--checkpoint=latest|best|STEP|/path/to/checkpoint] [--recursive]

The workdir is the run: eval and predict read DIR/config.json (the config training resolved and
wrote) when --config is not given; `--config.*` overrides still apply on top of it (e.g. the
eval protocol) and are printed as a diff. `--config=DIR/config.json` loads a saved config too.

train: trains (resuming from DIR's latest checkpoint), evaluates every eval_every_steps.
eval: evaluates a checkpoint of DIR on the eval split with the config's `eval` protocol (whole
  image or sliding windows, test-time scales and flip) and writes the per-class IoU table.
predict: segments every .jpg/.jpeg/.png of IN with that protocol and writes NAME_mask.png
  (palette colours), NAME_overlay.png and NAME_ids.png (class ids) into OUT, with a progress line
  on stderr; the dataset need not be prepared. --checkpoint may be a path (a WORKDIR/checkpoints/
  STEP folder or a workdir), in which case --workdir is not needed.

Multi-host (docs/SCALING.md): every process runs the same command with --coordinator_address,
--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID), or with --distributed under a scheduler JAX detects (SLURM, Open MPI, TPU pods).
"""

from __future__ import annotations

import os
import sys

# TensorFlow is only for tf.data: keep it off every accelerator, before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (configs/NAME.py[:arg]) or a run's WORKDIR/config.json; eval and "
    "predict default to WORKDIR/config.json.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_string(
    "checkpoint",
    "latest",
    "eval/predict: 'latest', 'best' or a step number of --workdir; predict also takes a path to "
    "a checkpoint (WORKDIR/checkpoints/STEP) or a workdir.",
)
flags.DEFINE_string("images", None, "predict: folder of .jpg/.jpeg/.png images to segment.")
flags.DEFINE_string("output", None, "predict: folder for NAME_mask/_overlay/_ids.png files.")
flags.DEFINE_bool("recursive", False, "predict: also read the sub-folders of --images.")
flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process run under a scheduler: jax.distributed.initialize() reads the coordinator, "
    "process count and index from SLURM / Open MPI / Cloud TPU (docs/SCALING.md).",
)
flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: HOST:PORT of process 0 ($JAX_COORDINATOR_ADDRESS)."
)
flags.DEFINE_integer(
    "num_processes", None, "Multi-process: number of processes ($JAX_NUM_PROCESSES)."
)
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index ($JAX_PROCESS_ID).")
flags.DEFINE_integer(
    "peer_timeout",
    100,
    "Multi-process: seconds without a heartbeat after which a peer is taken for dead and the run "
    "stops (a rerun resumes from the last checkpoint).",
)
flags.DEFINE_integer(
    "connect_timeout", 300, "Multi-process: seconds to wait for every process to join."
)
flags.DEFINE_string(
    "compile_cache",
    "",
    "Persistent compilation cache folder ('' = $MSC_SEG_COMPILE_CACHE or ~/.cache/msc_seg/jax; "
    "'off' = no cache): a repeated or resumed run loads its compiled steps instead of compiling.",
)
flags.DEFINE_bool(
    "xla_alarms", False, "Show XLA's 'Very slow compile?' alarms (hidden by default)."
)


def _start_distributed() -> None:
    """jax.distributed.initialize for the launch the flags / JAX_* variables ask for (none for
    a single-process run); a launch that cannot work is one line and exit code 2."""
    from msc_seg import distributed

    try:
        launch = distributed.resolve(
            distributed=FLAGS.distributed,
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
        if launch is not None and FLAGS.mode == "predict":
            raise distributed.LaunchError(
                "--mode=predict runs on one process (one host segments the folder); start it "
                "without --distributed / --coordinator_address / JAX_* variables"
            )
        if launch is not None:
            distributed.initialize(
                launch, peer_timeout_s=FLAGS.peer_timeout, connect_timeout_s=FLAGS.connect_timeout
            )
    except distributed.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _check_mode_flags() -> None:
    """Usage errors naming the missing flag of the chosen mode."""
    if FLAGS.mode == "predict":
        for name in ("images", "output"):
            if not FLAGS[name].value:
                _fail(f"--mode=predict needs --{name}=DIR")
        if not FLAGS.workdir and not (
            FLAGS.checkpoint not in ("latest", "best") and not FLAGS.checkpoint.isdigit()
        ):
            _fail(
                "--mode=predict needs --workdir (with --checkpoint=latest|best|STEP) or "
                "--checkpoint=/path/to/checkpoint"
            )
    elif not FLAGS.workdir:
        _fail(f"--mode={FLAGS.mode} needs --workdir=DIR")


def _predict() -> None:
    from msc_seg import modes

    result = modes.predict_images(
        FLAGS.config,
        images=FLAGS.images,
        output=FLAGS.output,
        workdir=FLAGS.workdir,
        checkpoint=FLAGS.checkpoint,
        recursive=FLAGS.recursive,
    )
    skipped = result["skipped"]
    print(
        f"wrote {len(result['written'])} predictions to {FLAGS.output} (checkpoint "
        f"{result['checkpoint']})"
        + (f"; skipped {len(skipped)} unreadable files:" if skipped else "")
    )
    for path, _ in skipped:
        print(f"  {path}")


def _fail(message: str) -> None:
    """A user's mistake: one line on stderr, exit code 2 (nothing was written)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# The saved config.json main loaded (eval/predict with --workdir alone, or --config=FILE.json).
_SAVED_CONFIG: str | None = None


def _show_config_source() -> None:
    """Which saved config the run uses, and what the command line changed in it."""
    from msc_seg import saved_config

    diffs = saved_config.differences(saved_config.read(_SAVED_CONFIG), FLAGS.config)
    print(
        f"config: {_SAVED_CONFIG}"
        + (f" with overrides: {'; '.join(diffs)}" if diffs else " (no overrides)"),
        flush=True,
    )


def _check_before_building() -> None:
    """What can be checked from the config, the workdir and the flags alone, before TensorFlow,
    the dataset or the model: renamed / unknown fields, the cross-field checks, the model's
    name and dtype, model_init, the workdir's config (structural changes), --checkpoint and
    --images. A mistake found here costs seconds and writes nothing."""
    import pathlib

    from msc_seg import checkpointing, config_lib, experiment
    from msc_seg.errors import ArgumentError

    for note in config_lib.upgrade(FLAGS.config):  # experiment.build finds nothing left to move
        print(f"note: {note}", flush=True)
    config_lib.validate(FLAGS.config, experiment.runtime_facts())
    experiment.check_model_fields(FLAGS.config)
    if FLAGS.mode == "predict" and not pathlib.Path(FLAGS.images).is_dir():
        what = "is not a folder" if pathlib.Path(FLAGS.images).exists() else "does not exist"
        raise ArgumentError("--images", FLAGS.images, f"{what}; pass a folder of images")
    if FLAGS.mode != "train":
        item = checkpointing.resolve_checkpoint(FLAGS.workdir, FLAGS.checkpoint)
        run_dir = checkpointing.workdir_of(item)
    else:
        run_dir = pathlib.Path(FLAGS.workdir)
    if run_dir.is_dir():
        checkpointing.check_workdir_config(
            run_dir,
            config_lib.to_dict(FLAGS.config),
            what="this config" if FLAGS.mode == "train" else "--config",
        )


def main(argv) -> None:
    # checkpointing (orbax, JAX: ~3 s to import) only once the flags and workdir are usable.
    from msc_seg import cli_checks
    from msc_seg.errors import ArgumentError, ConfigError

    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    _check_mode_flags()
    if FLAGS.config is None:
        if FLAGS.mode != "train" and FLAGS.workdir and not os.path.isdir(FLAGS.workdir):
            _fail(f"--workdir={FLAGS.workdir} does not exist; train first or fix --workdir")
        if FLAGS.mode != "train" and FLAGS.workdir:
            _fail(
                f"--workdir={FLAGS.workdir} has no config.json to evaluate with; pass "
                "--config=configs/NAME.py (the config it was trained with)"
            )
        _fail("--config is required, e.g. --config=configs/demo.py")
    # Before anything asks JAX for its devices (the checks below count them): a multi-process
    # launch has to connect first; a single-process run does nothing here.
    _start_distributed()
    if FLAGS.workdir:
        try:
            cli_checks.check_workdir(FLAGS.workdir, FLAGS.mode)
        except ArgumentError as e:
            _fail(str(e))
    from msc_seg import checkpointing

    try:
        if _SAVED_CONFIG:
            _show_config_source()
        _check_before_building()
    except (
        ArgumentError,
        ConfigError,
        checkpointing.CheckpointError,
        checkpointing.WorkdirMismatchError,
    ) as e:
        _fail(str(e))
    if not FLAGS["verbosity"].present:
        # Progress lines and tables are printed; library INFO logs (orbax, clu) only with -v 0,
        # and library errors as one line each (the run reports what failed itself).
        logging.set_verbosity(logging.WARNING)
        from msc_seg.reporting import quiet_library_tracebacks

        quiet_library_tracebacks()
    print(
        f"{FLAGS.mode}: the command line and config are valid; loading TensorFlow ...", flush=True
    )
    from msc_seg import reporting

    with reporting.Heartbeat(lambda t: f"loading TensorFlow ... {t}"):
        from msc_seg.data import builders, conventions

        conventions.hide_accelerators_from_tensorflow()  # tf.data only: before any TF op runs

    if FLAGS.compile_cache != "off":
        from msc_seg import compile_cache

        compile_cache.enable(FLAGS.compile_cache or None)

    from msc_seg import checkpointing, distributed, modes, predict, train

    try:
        # Multi-process: a dead peer ends this process with one line within --peer_timeout.
        with distributed.PeerWatch(FLAGS.peer_timeout):
            if FLAGS.mode == "train":
                train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
            elif FLAGS.mode == "eval":
                modes.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)
            else:
                _predict()
    except (
        ConfigError,
        ArgumentError,
        checkpointing.WorkdirMismatchError,
        train.NonFiniteLossError,
        predict.PredictError,
        builders.DatasetNotPreparedError,  # data-preparation errors carry instructions
        FileNotFoundError,
    ) as e:
        _fail(str(e))
    except checkpointing.CheckpointSaveError as e:  # a fault, not a usage error: exit 1
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def refuse_renamed_overrides(argv: list[str]) -> None:
    """`--config.OLD=...` of a renamed field: one line naming the new field, exit code 2 (absl
    would only say the field does not exist)."""
    from msc_seg.config_lib import RENAMED_FIELDS

    for arg in argv[1:]:
        if arg.startswith("--config.") and "=" in arg:
            field = arg[len("--config.") : arg.index("=")]
            if field in RENAMED_FIELDS:
                print(
                    f"error: config field `{field}` is now `{RENAMED_FIELDS[field]}`; pass "
                    f"--config.{RENAMED_FIELDS[field]}={arg.split('=', 1)[1]}",
                    file=sys.stderr,
                )
                sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every parse error (an unknown or mistyped flag or config field,
    a missing or failing config file) as one line and exit code 2 instead of a traceback."""
    from msc_seg import cli_checks

    try:
        rest = FLAGS(argv)
        if FLAGS.config is not None:  # a failed config file is reported on first use
            FLAGS.config.keys()
    except Exception as e:  # noqa: BLE001 - explained in one line, never a traceback
        _fail(cli_checks.explain_flag_error(argv, e))
    return rest


def run() -> None:
    global _SAVED_CONFIG
    import atexit
    import gc

    from msc_seg import cli_checks

    # Python's final collection walks every object TensorFlow and JAX made: ~2-5 s of each exit
    # on a 2-core CPU. Registered before anything of the run is imported, so it runs after the
    # exit handlers of TensorFlow, orbax, clu and the compile cache; the run has closed its
    # files, writers and checkpoint managers by then, and frozen objects are skipped.
    atexit.register(gc.freeze)

    refuse_renamed_overrides(sys.argv)
    argv, _SAVED_CONFIG = cli_checks.config_argv(sys.argv)
    if "--xla_alarms" not in argv:
        from msc_seg import compile_cache

        compile_cache.quiet_xla_alarms()
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
