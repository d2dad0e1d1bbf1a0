"""Datasets (registry, tfds builders), pure-TF transforms and the tf.data input pipeline.

`pipeline` is imported first: it hides GPUs/TPUs from TensorFlow before any TF op runs.
"""

from msc_seg.data.pipeline import (
    DatasetNotPreparedError,
    EvalDataset,
    load_split,
    make_eval_dataset,
    make_train_iterator,
    preparation_instructions,
    prepare_dataset,
    split_sizes,
)
from msc_seg.data.registry import IGNORE_LABEL, DatasetSpec, get_dataset_spec, known_datasets

__all__ = [
    "IGNORE_LABEL",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "EvalDataset",
    "get_dataset_spec",
    "known_datasets",
    "load_split",
    "make_eval_dataset",
    "make_train_iterator",
    "preparation_instructions",
    "prepare_dataset",
    "split_sizes",
]
