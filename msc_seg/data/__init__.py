"""Datasets, their tfds builders, pure-TF transforms and the tf.data input pipeline.

Import the submodule you need; this package imports nothing itself, so `conventions` (the ignore
label, normalisation, the eval resize rule) stays free of TensorFlow:

  conventions    IGNORE_LABEL, IMAGENET_MEAN/STD, PAD_VALUE, normalize (numpy), eval_resize_hw,
                 hide_accelerators_from_tensorflow (no TensorFlow import)
  registry       DatasetSpec, register_dataset, get_dataset_spec, known_datasets (+ built-ins)
  user_datasets  register_folder_dataset, register_dataset_file (users' folder datasets)
  builders       make_builder, prepare_dataset, split_sizes, DatasetNotPreparedError, ...
  pipeline       load_split, make_train_iterator (TrainIterator), make_eval_dataset, EvalDataset
  train_order    GlobalOrder: the global training stream's order (no TensorFlow)
  records        RecordIndex: random access to a built split's TFRecords
  transforms     tf.data transforms: train augmentation, normalize (TF), resize_for_eval
  ade20k, cadis, camvid, cityscapes, demo, pascal_context: the built-in datasets' tables
  demo_builder, folder_builder, layouts: the tfds builders and the folder layouts they read
  stats          dataset_stats.json: per-class counts, image sizes, label ids per split
  prepare        `python -m msc_seg.data.prepare`: builds a dataset into a tfds data_dir and
                 profiles it (stats)
"""
