"""tfds builders of registered datasets: making them, building (preparing) them, their splits.

TensorFlow is used for tf.data only: importing this module hides every GPU/TPU from it (before
any TF op runs), so the accelerators stay with JAX. It also quiets tfds (no progress bars, no
warnings that are expected for our builders).
"""

from __future__ import annotations

import logging as pylogging

import tensorflow_datasets as tfds

from msc_seg.data.conventions import hide_accelerators_from_tensorflow
from msc_seg.data.demo_builder import MscSegDemo
from msc_seg.data.folder_builder import FolderConfig, MscSegFolder
from msc_seg.data.registry import DatasetSpec

hide_accelerators_from_tensorflow()


class _QuietTfdsFilter(pylogging.Filter):
    """Drops tfds warnings that are expected here (custom folder configs, first builds)."""

    _EXPECTED = ("Using custom data configuration", "has no dataset_info.json")

    def filter(self, record: pylogging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self._EXPECTED)


tfds.disable_progress_bar()
pylogging.getLogger("absl").addFilter(_QuietTfdsFilter())


def _announce_build(builder) -> None:
    print(f"preparing dataset {builder.name} in {builder.data_dir} (once) ...", flush=True)


def _announce_built(builder) -> None:
    print(f"dataset {builder.name} prepared in {builder.data_dir}", flush=True)


# Our builders read local files (or generate the demo): tfds's "Downloading and preparing dataset
# Unknown size (download: Unknown size, ...)" and "downloaded and prepared" lines are wrong there.
for _builder in (MscSegDemo, MscSegFolder):
    _builder._log_download_bytes = _announce_build
    _builder._log_download_done = _announce_built


class DatasetNotPreparedError(RuntimeError):
    """The dataset is not built in `data_dir`; the message says how to build it."""


def make_builder(
    spec: DatasetSpec,
    data_dir: str,
    *,
    root: str | None = None,
    unknown_label_ids: str = "error",
):
    """The tfds builder of `spec` reading from / writing to `data_dir`.

    `root` (folder datasets only) is the folder to build from; reading needs no root.
    `unknown_label_ids` ("error" or "ignore", folder datasets only) is what label ids outside the
    dataset's known raw ids do when building.
    """
    if spec.source == "demo":
        return MscSegDemo(data_dir=data_dir)
    if spec.source == "folder":
        config = FolderConfig(
            name=spec.tfds_name,
            root=root,
            layout=spec.layout,
            image_dir=spec.image_dir,
            label_dir=spec.label_dir,
            split_names=spec.split_folders,
            label_format=spec.label_format,
            known_label_ids=spec.known_raw_ids,
            palette=tuple(tuple(int(v) for v in c) for c in spec.palette),
            ignore_colors=spec.ignore_colors,
            unknown_label_ids=unknown_label_ids,
        )
        return MscSegFolder(config=config, data_dir=data_dir)
    if spec.source == "tfds":
        return tfds.builder(spec.tfds_name, data_dir=data_dir)
    raise ValueError(f"Dataset {spec.name!r}: unknown source {spec.source!r}.")


def preparation_instructions(spec: DatasetSpec, data_dir: str) -> str:
    """How to build `spec` into `data_dir`, as shell commands a user can run."""
    if spec.source == "demo":
        return (
            "Build it with: python -m msc_seg.data.prepare "
            f"--dataset={spec.name} --data_dir={data_dir}"
        )
    if spec.source == "folder":
        return (
            f"{spec.download_hint}\nThen build it with: python -m msc_seg.data.prepare "
            f"--dataset={spec.name} --data_dir={data_dir} --root=/path/to/{spec.name}_root"
        )
    builder_cls = tfds.builder_cls(spec.tfds_name.split("/")[0])  # name without its config
    manual = getattr(builder_cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    text = (
        f"It is a tensorflow-datasets catalog dataset: build it with: tfds build "
        f"{spec.tfds_name} --data_dir={data_dir}"
        + (" --manual_dir=/path/to/downloaded_files" if manual else "")
        + (f"\nManual download: {' '.join(manual.split())}" if manual else "")
    )
    return f"{spec.download_hint}\n{text}" if spec.download_hint else text


def prepared_builder(spec: DatasetSpec, data_dir: str):
    """The builder of `spec` in `data_dir`; DatasetNotPreparedError (saying how) if not built."""
    builder = make_builder(spec, data_dir)
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"Dataset {spec.name!r} is not prepared in data_dir={data_dir} (config field "
            f"`dataset.data_dir`). {preparation_instructions(spec, data_dir)}"
        )
    return builder


def prepare_dataset(
    spec: DatasetSpec,
    data_dir: str,
    *,
    root: str | None = None,
    unknown_label_ids: str = "error",
) -> None:
    """Builds `spec` into `data_dir` if it is not there yet (no network is ever used).

    The demo builds from nothing; folder datasets need `root` (and raise FolderDatasetError
    naming the files when it is malformed; `unknown_label_ids="ignore"` reads label ids the
    dataset does not know as ignore instead of failing). Catalog tfds datasets must be built
    with the `tfds build` command: DatasetNotPreparedError says how.
    """
    builder = make_builder(spec, data_dir, root=root, unknown_label_ids=unknown_label_ids)
    if builder.is_prepared():
        return
    if spec.source == "tfds" or (spec.source == "folder" and not root):
        raise DatasetNotPreparedError(
            f"Dataset {spec.name!r} is not prepared in data_dir={data_dir} and cannot be built "
            f"here without its files. {preparation_instructions(spec, data_dir)}"
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )


def split_sizes(spec: DatasetSpec, data_dir: str) -> dict[str, int]:
    """Number of examples of every split of a prepared dataset."""
    builder = prepared_builder(spec, data_dir)
    return {name: info.num_examples for name, info in builder.info.splits.items()}


def check_split(builder, spec: DatasetSpec, split: str) -> None:
    """Accepts a split name or a tfds split expression over them ("validation+test",
    "train[:10%]"); ValueError listing the available splits otherwise."""
    available = sorted(builder.info.splits.keys())
    if split in available:
        return
    try:
        builder.info.splits[split]
    except (ValueError, KeyError, AssertionError, TypeError):
        raise ValueError(
            f"Dataset {spec.name!r} has no split {split!r} (config fields `dataset.train_split` / "
            f"`dataset.eval_split`). Available splits: {', '.join(available)} (or a tfds split "
            "expression over them, e.g. 'validation+test')."
        ) from None
