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

Multi-host: every host runs the same command; `jax.distributed.initialize()` is called when
--distributed is given (or the usual cluster environment variables are present).
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
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")


def hide_accelerators_from_tensorflow() -> None:
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            pass


def _wants_distributed() -> bool:
    return FLAGS.distributed or any(
        v in os.environ for v in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")
    )


def _checkpoint_is_path(checkpoint: str) -> bool:
    return checkpoint not in ("latest", "best") and not checkpoint.isdigit()


def _check_mode_flags() -> None:
    """Usage errors naming the missing flag of the chosen mode."""
    if FLAGS.mode == "predict":
        for name in ("images", "output"):
            if not FLAGS[name].value:
                raise app.UsageError(f"--mode=predict needs --{name}=DIR")
        if not FLAGS.workdir and not _checkpoint_is_path(FLAGS.checkpoint):
            raise app.UsageError(
                "--mode=predict needs --workdir (with --checkpoint=latest|best|STEP) or "
                "--checkpoint=/path/to/checkpoint"
            )
    elif not FLAGS.workdir:
        raise app.UsageError("--workdir is required")


def _predict() -> None:
    from msc_seg import predict

    result = predict.predict_folder(
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
    hide_accelerators_from_tensorflow()
    import jax

    if _wants_distributed():
        jax.distributed.initialize()

    from msc_seg import config_lib, evaluate, predict, train

    try:
        if FLAGS.mode == "train":
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        elif FLAGS.mode == "eval":
            evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)
        else:
            _predict()
    except (
        config_lib.ConfigError,
        train.WorkdirMismatchError,
        train.NonFiniteLossError,
        predict.PredictError,
        FileNotFoundError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # data-preparation errors carry instructions: show them plainly
        from msc_seg.data import pipeline

        if isinstance(e, pipeline.DatasetNotPreparedError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
