"""Builds a registered dataset into a tfds data_dir, profiles it and prints a short summary.

    python -m msc_seg.data.prepare --dataset=demo --data_dir=/data/tfds
    python -m msc_seg.data.prepare --dataset=camvid --data_dir=/data/tfds --root=/data/camvid
    python -m msc_seg.data.prepare --dataset=cityscapes --data_dir=/data/tfds --root=/data/cs
    python -m msc_seg.data.prepare --dataset_file=mine.json --data_dir=/data/tfds --root=/data/mine

Needs no network: the demo is generated, folder datasets are read from --root. For datasets of
the tfds catalog (scene_parse150, cityscapes_tfds) it prints the `tfds build` command to run.

After a build (or for a dataset built earlier) it writes `dataset_stats.json` beside the tfds
data (data/stats.py: per-class pixels and images per split, image sizes, label ids seen) and
prints a summary: split sizes, largest image, ignore share, largest label id, classes with 0
pixels, classes absent from the eval split. `--stats` recomputes the file and also prints the
per-class table. Label ids outside the class list stop it (exit 1) naming the dataset file and
its "classes" field, unless --unknown_label_ids=ignore was given (then a warning).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from msc_seg.data import stats as stats_lib
from msc_seg.data.builders import DatasetNotPreparedError, prepare_dataset
from msc_seg.data.registry import get_dataset_spec
from msc_seg.data.user_datasets import register_dataset_file

_DATASET = flags.DEFINE_string("dataset", None, "Registered dataset name (or give --dataset_file).")
_DATASET_FILE = flags.DEFINE_string(
    "dataset_file", None, "JSON description of your own folder dataset (docs/DATASETS.md)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir to build into (required).")
_ROOT = flags.DEFINE_string("root", None, "Source folder (folder datasets only).")
_UNKNOWN_LABEL_IDS = flags.DEFINE_enum(
    "unknown_label_ids",
    "error",
    ["error", "ignore"],
    "Label ids the dataset does not know (colours outside the palette for palette labels): "
    "'error' stops the build naming the files, 'ignore' reads them as ignore.",
)
_STATS = flags.DEFINE_bool(
    "stats",
    False,
    "Recompute dataset_stats.json (it is written after every build anyway) and print the "
    "per-class pixel share and image count of every split.",
)


def _spec():
    if _DATASET_FILE.value:
        spec = register_dataset_file(_DATASET_FILE.value)
        if _DATASET.value and _DATASET.value != spec.name:
            raise ValueError(
                f"--dataset={_DATASET.value} but {_DATASET_FILE.value} describes {spec.name!r}; "
                "give one of them."
            )
        return spec
    if not _DATASET.value:
        raise ValueError("Give --dataset=NAME (a registered dataset) or --dataset_file=FILE.json.")
    return get_dataset_spec(_DATASET.value)


def main(argv: list[str]) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # tfds logs every shard it writes at INFO.
    try:
        if not _DATA_DIR.value:
            raise ValueError("Give --data_dir=DIR, the tfds data dir to build into.")
        spec = _spec()
        prepare_dataset(
            spec, _DATA_DIR.value, root=_ROOT.value, unknown_label_ids=_UNKNOWN_LABEL_IDS.value
        )
        accept = _UNKNOWN_LABEL_IDS.value == "ignore"
        stats = stats_lib.ensure_stats(
            spec, _DATA_DIR.value, recompute=_STATS.value, accept_unknown_ids=accept
        )
    except (DatasetNotPreparedError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{spec.name} in {_DATA_DIR.value}:")
    for split, s in sorted(stats.splits.items()):
        print(f"  {split}: {s.num_images} examples")
    print(stats_lib.summary(spec, stats))
    if _STATS.value:
        print(stats_lib.class_table(stats))
    unknown = stats_lib.unknown_raw_ids(spec, stats)
    if unknown:
        message = stats_lib.unknown_ids_message(spec, unknown)
        if not accept:
            print(f"error: {message} (--unknown_label_ids=ignore accepts them.)", file=sys.stderr)
            return 1
        print(f"warning: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
