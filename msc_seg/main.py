"""Entry point.

    python -m msc_seg.main --config=configs/ade20k_upernet.py --workdir=DIR [--config.a.b=v]
    python -m msc_seg.main --mode=eval --config=... --workdir=DIR [--checkpoint=latest|best|STEP]

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
flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to do.")
flags.DEFINE_string("checkpoint", "latest", "eval mode: 'latest', 'best' or a step number.")
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


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    if not FLAGS["verbosity"].present:
        # Progress lines and tables are printed; library INFO logs (orbax, clu) only with -v 0.
        logging.set_verbosity(logging.WARNING)
    hide_accelerators_from_tensorflow()
    import jax

    if _wants_distributed():
        jax.distributed.initialize()

    from msc_seg import config_lib, evaluate, train

    try:
        if FLAGS.mode == "train":
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        else:
            evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)
    except (
        config_lib.ConfigError,
        train.WorkdirMismatchError,
        train.NonFiniteLossError,
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
