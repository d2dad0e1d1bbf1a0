"""Builds a registered dataset into a tfds data_dir and prints its split sizes.

    python -m msc_seg.data.prepare --dataset=demo --data_dir=/data/tfds
    python -m msc_seg.data.prepare --dataset=camvid --data_dir=/data/tfds --root=/data/camvid
    python -m msc_seg.data.prepare --dataset=cityscapes --data_dir=/data/tfds --root=/data/cs
    python -m msc_seg.data.prepare --dataset_file=mine.json --data_dir=/data/tfds --root=/data/mine

Needs no network: the demo is generated, folder datasets are read from --root. For datasets of
the tfds catalog (scene_parse150, cityscapes_tfds) it prints the `tfds build` command to run.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from msc_seg.data.builders import DatasetNotPreparedError, prepare_dataset, split_sizes
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
        sizes = split_sizes(spec, _DATA_DIR.value)
    except (DatasetNotPreparedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{spec.name} in {_DATA_DIR.value}:")
    for split, count in sorted(sizes.items()):
        print(f"  {split}: {count} examples")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
