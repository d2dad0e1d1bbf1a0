"""The eval and predict modes: a config and a workdir's checkpoint -> a table or a folder of PNGs.

Both build the run with experiment.py, find the checkpoint with checkpointing.py and hand the
built objects to evaluate.py / predict.py.
"""

from __future__ import annotations

import pathlib

import ml_collections

from msc_seg import checkpointing, experiment, predict, reporting


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, checkpoint: str = "latest"
) -> dict:
    """Evaluates a checkpoint of `workdir` ('latest', 'best' or a step number) on the eval split
    with the config's eval protocol; prints and writes the per-class table.

    The table goes to eval_<step>.json when the protocol is the one training evaluated with
    (WORKDIR/config.json's), else to eval_<step>_<protocol>.json (`experiment.protocol_tag`):
    a test-time-augmented evaluation never overwrites the plain one.
    """
    checkpointing.resolve_checkpoint(str(workdir), checkpoint)  # a bad --checkpoint: say so now
    exp = experiment.build(config, workdir, mode="eval")
    try:
        best = checkpoint == "best"
        step = None if checkpoint in ("latest", "best") else int(checkpoint)
        with reporting.Heartbeat(lambda t: f"restoring the checkpoint ... {t}"):
            state, step = exp.checkpointer.restore(exp.parts.abstract_state, step, best=best)
        trained = checkpointing.saved_config(workdir)
        tag = experiment.protocol_tag(config)
        if trained is not None and experiment.protocol_tag(trained) == tag:
            tag = ""
        return exp.evaluate(state, int(step), protocol=tag)
    finally:
        exp.close()


def predict_images(
    config: ml_collections.ConfigDict,
    *,
    images: str | pathlib.Path,
    output: str | pathlib.Path,
    workdir: str | None = None,
    checkpoint: str = "latest",
    recursive: bool = False,
    stream=None,
) -> dict:
    """Segments every image of `images` into `output` with the checkpoint `--checkpoint` names
    (see predict.py). Returns {'written', 'skipped', 'checkpoint': the item folder restored}.

    The checkpoint's workdir config.json is checked against `config` (a structurally different
    model is refused, naming the fields). The dataset need not be prepared.
    """
    predict.list_images(images, recursive=recursive)  # a bad --images fails before any build
    item_dir = checkpointing.resolve_checkpoint(workdir, checkpoint)
    run_dir = checkpointing.workdir_of(item_dir)
    if (run_dir / "config.json").exists():
        exp = experiment.build(config, run_dir, mode="predict")
    else:  # a bare checkpoint folder: nothing to check it against
        exp = experiment.build(config, None, mode="predict")
    if checkpoint == "latest" and workdir:  # the newest intact step (damaged ones moved aside)
        state, item_dir = checkpointing.restore_latest_item(workdir, exp.parts.abstract_state)
    else:
        state = checkpointing.restore_item(item_dir, exp.parts.abstract_state)
    data = config.eval.data
    settings = predict.PredictInput(
        pad_shape=tuple(int(v) for v in data.pad_shape),
        batch_size=int(config.eval.batch_size),
        resize_short_side=int(data.resize_short_side),
        resize_long_side=int(data.resize_long_side),
    )
    predict_fn = predict.make_predict_fn(
        exp.parts.model_def, experiment.build_protocol(config), resize_output=settings.resizes
    )
    result = predict.predict_folder(
        predict_fn,
        state,
        exp.mesh,
        images=images,
        output=output,
        settings=settings,
        palette=exp.spec.palette,
        recursive=recursive,
        stream=stream,
    )
    return result | {"checkpoint": item_dir}
