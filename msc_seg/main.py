r"""Entry point.

    python -m msc_seg.main --config=configs/ade20k_upernet.py --workdir=DIR [--config.a.b=v]
    python -m msc_seg.main --mode=eval --config=... --workdir=DIR [--checkpoint=latest|best|STEP]
    python -m msc_seg.main --mode=predict --config=... --workdir=DIR --images=IN --output=OUT \
        [--checkpoint=latest|best|STEP|/path/to/checkpoint] [--recursive]

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
    "config", None, "Experiment config file (configs/NAME.py[:arg]).", lock_config=True
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
                raise app.UsageError(f"--mode=predict needs --{name}=DIR")
        if not FLAGS.workdir and not (
            FLAGS.checkpoint not in ("latest", "best") and not FLAGS.checkpoint.isdigit()
        ):
            raise app.UsageError(
                "--mode=predict needs --workdir (with --checkpoint=latest|best|STEP) or "
                "--checkpoint=/path/to/checkpoint"
            )
    elif not FLAGS.workdir:
        raise app.UsageError("--workdir is required")


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


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
    _check_mode_flags()
    if not FLAGS["verbosity"].present:
        # Progress lines and tables are printed; library INFO logs (orbax, clu) only with -v 0.
        logging.set_verbosity(logging.WARNING)
    from msc_seg.data import builders, conventions

    conventions.hide_accelerators_from_tensorflow()  # tf.data only: before any TF op runs

    _start_distributed()
    if FLAGS.compile_cache != "off":
        from msc_seg import compile_cache

        compile_cache.enable(FLAGS.compile_cache or None)

    from msc_seg import checkpointing, distributed, modes, predict, train
    from msc_seg.errors import ConfigError

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
        checkpointing.WorkdirMismatchError,
        train.NonFiniteLossError,
        predict.PredictError,
        FileNotFoundError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except checkpointing.CheckpointSaveError as e:  # a fault, not a usage error: exit 1
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # data-preparation errors carry instructions: show them plainly
        if isinstance(e, builders.DatasetNotPreparedError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


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


def run() -> None:
    refuse_renamed_overrides(sys.argv)
    if "--xla_alarms" not in sys.argv:
        from msc_seg import compile_cache

        compile_cache.quiet_xla_alarms()
    app.run(main)


if __name__ == "__main__":
    run()
