"""Builds a registered dataset into a tfds data_dir and prints its split sizes.

    python -m msc_seg.data.prepare --dataset=demo --data_dir=/data/tfds
    python -m msc_seg.data.prepare --dataset=camvid --data_dir=/data/tfds --root=/data/camvid

Needs no network: the demo is generated, folder datasets are read from --root.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from msc_seg.data.pipeline import DatasetNotPreparedError, prepare_dataset, split_sizes
from msc_seg.data.registry import get_dataset_spec

_DATASET = flags.DEFINE_string("dataset", None, "Registered dataset name.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir to build into.", required=True)
_ROOT = flags.DEFINE_string("root", None, "Source folder (folder datasets only).")


def main(argv: list[str]) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # tfds logs every shard it writes at INFO.
    try:
        spec = get_dataset_spec(_DATASET.value)
        prepare_dataset(spec, _DATA_DIR.value, root=_ROOT.value)
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
