"""What a prepared dataset holds: per-class pixel and image counts, image sizes, label ids seen.

`compute_stats` reads every label of every split once with tf.data (images stay encoded: a
label has its image's size, which the folder builder checks and the pipeline asserts) and
reduces fixed-size bincounts, so the cost is one PNG decode per label. `write_stats` stores the
result as `dataset_stats.json` in the tfds version folder of the dataset
(`<data_dir>/<builder>/<config>/<version>/`), where `stats_path` finds it from the dataset name
and the data_dir. The prepare CLI writes it after every build; the run reads it at start-up
(eval canvas vs image sizes, label ids vs the class list) and for `loss.class_weights` =
"inverse_freq" / "median_freq" / "enet".

File layout (one build can serve several datasets with their own label tables, the CaDIS
experiments, so the counts are kept per dataset name):

    {"format": 1,
     "datasets": {NAME: {"class_names": [K names], "label_table": [raw id -> class, -1 ignore],
                         "splits": {SPLIT: SplitStats fields}}}}

Image sizes and raw label ids do not depend on the label table: any dataset entry of the file
answers them (`split_facts`). Class counts are only used when the entry's class names and label
table equal the current spec's (otherwise the dataset description changed since: recompute).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from msc_seg.data import builders
from msc_seg.data.registry import DatasetSpec

STATS_FILE = "dataset_stats.json"
FORMAT = 1
# Raw ids are counted in bins 0..255; bin 256 holds ids outside [0, 255] (16-bit labels).
RAW_BINS = 257


@dataclasses.dataclass(frozen=True)
class SplitStats:
    """Counts of one split under one dataset's label table (K classes).

    Attributes:
      num_images: examples in the split.
      max_image_shape, min_image_shape: (H, W), elementwise max / min over the images.
      raw_ids_seen: distinct raw stored label ids present (256 = an id outside 0..255).
      class_pixels: int [K] pixels of each class.
      class_images: int [K] images holding at least one pixel of each class.
      class_image_pixels: int [K] labelled (non-ignore) pixels of the images holding each class
        (the denominator of the median-frequency weights).
      ignore_pixels, total_pixels: ignore pixels, all pixels.
    """

    num_images: int
    max_image_shape: tuple[int, int]
    min_image_shape: tuple[int, int]
    raw_ids_seen: tuple[int, ...]
    class_pixels: tuple[int, ...]
    class_images: tuple[int, ...]
    class_image_pixels: tuple[int, ...]
    ignore_pixels: int
    total_pixels: int

    @property
    def labelled_pixels(self) -> int:
        return self.total_pixels - self.ignore_pixels

    @property
    def pixel_share(self) -> np.ndarray:
        """float64 [K]: each class's share of the labelled (non-ignore) pixels."""
        return np.asarray(self.class_pixels, np.float64) / max(self.labelled_pixels, 1)

    @property
    def ignore_share(self) -> float:
        return self.ignore_pixels / max(self.total_pixels, 1)

    @classmethod
    def from_json(cls, d: dict) -> SplitStats:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        )


@dataclasses.dataclass(frozen=True)
class DatasetStats:
    """The stats of one dataset (name, class names) over its prepared splits, and their file."""

    name: str
    class_names: tuple[str, ...]
    splits: dict[str, SplitStats]
    path: pathlib.Path
    fresh: bool = True  # False: computed under another class list / label table (see module doc)
    # True when prepare was told (--unknown_label_ids=ignore) to read unknown raw ids as ignore.
    unknown_ids_accepted: bool = False

    def split(self, split: str) -> SplitStats | None:
        return self.splits.get(split)


# ---------------------------------------------------------------------------------------------
# Computing.


def _split_counts(builder, spec: DatasetSpec, split: str) -> SplitStats:
    """One pass over `split`: per-image fixed-size bincounts, summed by `Dataset.reduce`."""
    k = spec.num_classes
    label_feature = builder.info.features[spec.label_key]
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={
            spec.image_key: tfds.decode.SkipDecoding(),
            spec.label_key: tfds.decode.SkipDecoding(),
        },
        read_config=tfds.ReadConfig(try_autocache=False),
    )

    def per_image(example):
        raw = tf.cast(label_feature.decode_example(example[spec.label_key])[..., 0], tf.int32)
        raw_bins = tf.where((raw >= 0) & (raw < RAW_BINS - 1), raw, RAW_BINS - 1)
        raw_hist = tf.math.bincount(
            tf.reshape(raw_bins, [-1]), minlength=RAW_BINS, maxlength=RAW_BINS, dtype=tf.int64
        )
        label = spec.decode_label(raw)
        label = tf.where(label < 0, k, label)  # ignore -> bin K
        hist = tf.math.bincount(
            tf.reshape(label, [-1]), minlength=k + 1, maxlength=k + 1, dtype=tf.int64
        )
        present = tf.cast(hist[:k] > 0, tf.int64)
        labelled = tf.reduce_sum(hist[:k])
        return {
            "raw": raw_hist,
            "pixels": hist,
            "images": present,
            "image_pixels": present * labelled,
            "shape": tf.cast(tf.shape(raw)[:2], tf.int64),
        }

    zeros = {
        "raw": tf.zeros([RAW_BINS], tf.int64),
        "pixels": tf.zeros([k + 1], tf.int64),
        "images": tf.zeros([k], tf.int64),
        "image_pixels": tf.zeros([k], tf.int64),
        "count": tf.zeros([], tf.int64),
        "max_shape": tf.zeros([2], tf.int64),
        "min_shape": tf.fill([2], tf.int64.max),
    }

    def add(acc, x):
        out = {key: acc[key] + x[key] for key in ("raw", "pixels", "images", "image_pixels")}
        out["count"] = acc["count"] + 1
        out["max_shape"] = tf.maximum(acc["max_shape"], x["shape"])
        out["min_shape"] = tf.minimum(acc["min_shape"], x["shape"])
        return out

    options = tf.data.Options()
    options.deterministic = False
    total = (
        ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
        .with_options(options)
        .reduce(zeros, add)
    )
    total = {key: v.numpy() for key, v in total.items()}
    count = int(total["count"])
    pixels = total["pixels"]
    return SplitStats(
        num_images=count,
        max_image_shape=tuple(int(v) for v in total["max_shape"]) if count else (0, 0),
        min_image_shape=tuple(int(v) for v in total["min_shape"]) if count else (0, 0),
        raw_ids_seen=tuple(int(i) for i in np.flatnonzero(total["raw"])),
        class_pixels=tuple(int(v) for v in pixels[:k]),
        class_images=tuple(int(v) for v in total["images"]),
        class_image_pixels=tuple(int(v) for v in total["image_pixels"]),
        ignore_pixels=int(pixels[k]),
        total_pixels=int(pixels.sum()),
    )


def stats_path(spec: DatasetSpec, data_dir: str) -> pathlib.Path:
    """Where `dataset_stats.json` of `spec` lives: the tfds version folder of its build."""
    return pathlib.Path(builders.make_builder(spec, data_dir).data_dir) / STATS_FILE


def compute_stats(spec: DatasetSpec, data_dir: str) -> DatasetStats:
    """Counts every split of the prepared dataset (DatasetNotPreparedError if not built)."""
    builder = builders.prepared_builder(spec, data_dir)
    splits = {name: _split_counts(builder, spec, name) for name in sorted(builder.info.splits)}
    return DatasetStats(spec.name, spec.class_names, splits, stats_path(spec, data_dir))


def _fingerprint(spec: DatasetSpec) -> dict:
    return {"class_names": list(spec.class_names), "label_table": spec.label_table.tolist()}


def write_stats(spec: DatasetSpec, stats: DatasetStats) -> pathlib.Path:
    """Writes (or updates this dataset's entry of) the stats file; returns its path."""
    path = stats.path
    content = {"format": FORMAT, "datasets": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("format") == FORMAT:
                content = old
        except (OSError, json.JSONDecodeError):
            pass  # A broken file is rewritten.
    content["datasets"][spec.name] = {
        **_fingerprint(spec),
        "unknown_ids_accepted": stats.unknown_ids_accepted,
        "splits": {name: dataclasses.asdict(s) for name, s in stats.splits.items()},
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(content, indent=1))
    tmp.replace(path)
    return path


def load_stats(spec: DatasetSpec, data_dir: str) -> DatasetStats | None:
    """The stats of `spec` from its file; None if there is no file or no usable entry.

    An entry of another dataset of the same build (or of this name under an older class list)
    is returned with fresh=False: its image sizes and raw ids hold, its class counts do not.
    """
    path = stats_path(spec, data_dir)
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    datasets = content.get("datasets", {}) if content.get("format") == FORMAT else {}
    if not datasets:
        return None
    entry = datasets.get(spec.name)
    fresh = entry is not None and {
        k: entry.get(k) for k in ("class_names", "label_table")
    } == _fingerprint(spec)
    entry = entry or next(iter(datasets.values()))
    splits = {name: SplitStats.from_json(d) for name, d in entry["splits"].items()}
    accepted = fresh and bool(entry.get("unknown_ids_accepted", False))  # for this class list
    return DatasetStats(spec.name, tuple(entry["class_names"]), splits, path, fresh, accepted)


def ensure_stats(
    spec: DatasetSpec, data_dir: str, *, recompute: bool = False, accept_unknown_ids: bool = False
) -> DatasetStats:
    """The fresh stats of `spec`: from the file, else computed and written.

    accept_unknown_ids: recorded in the file (prepare's --unknown_label_ids=ignore): raw ids
    outside the class list are then a note at start-up, not an error.
    """
    stats = None if recompute else load_stats(spec, data_dir)
    if stats is None or not stats.fresh or stats.unknown_ids_accepted != accept_unknown_ids:
        if stats is None or not stats.fresh:
            stats = compute_stats(spec, data_dir)
        stats = dataclasses.replace(stats, unknown_ids_accepted=accept_unknown_ids)
        write_stats(spec, stats)
    return stats


# ---------------------------------------------------------------------------------------------
# Reading them.


def split_names(split: str) -> list[str]:
    """The split names a tfds split expression reads: "train[:10%]+val" -> ["train", "val"]."""
    return [part.split("[")[0].strip() for part in split.split("+") if part.strip()]


def max_image_shape(stats: DatasetStats, split: str) -> tuple[int, int] | None:
    """(H, W) bound of the images `split` (a name or a tfds expression) reads; None if unknown."""
    shapes = [stats.splits[s].max_image_shape for s in split_names(split) if s in stats.splits]
    if not shapes or len(shapes) != len(split_names(split)):
        return None
    return tuple(int(v) for v in np.max(np.asarray(shapes), axis=0))


def unknown_raw_ids(spec: DatasetSpec, stats: DatasetStats) -> dict[str, tuple[int, ...]]:
    """{split: raw ids present in its labels that are neither class ids nor ignore ids of
    `spec`} (read as ignore by `DatasetSpec.decode_label`); splits without any are left out."""
    known = set(spec.known_raw_ids)
    out = {}
    for name, s in stats.splits.items():
        unknown = tuple(i for i in s.raw_ids_seen if i not in known)
        if unknown:
            out[name] = unknown
    return out


def unknown_ids_message(spec: DatasetSpec, unknown: dict[str, tuple[int, ...]]) -> str:
    """One paragraph naming the ids, the class list and where to fix it."""
    ids = sorted({i for v in unknown.values() for i in v})
    shown = ", ".join("256+" if i == RAW_BINS - 1 else str(i) for i in ids[:12])
    where = ", ".join(f"{split}" for split in unknown)
    k, first = spec.num_classes, spec.label_offset
    if spec.id_map:
        classes = f"its id table maps raw ids 0..{len(spec.id_map) - 1}"
    else:
        classes = f'"classes" lists {k} names, for raw ids {first}..{first + k - 1}'
    return (
        f"Dataset {spec.name!r}: labels of split(s) {where} hold raw ids {shown}"
        f"{' ...' if len(ids) > 12 else ''} (largest {ids[-1]}) that are neither classes nor "
        f"ignore ids: {classes}, so they are read as ignore. If they are classes, add their names "
        f'to "classes" (and colours to "palette") in {spec.described_in}; if they mean ignore, '
        'add them to "ignore_ids" there; then run prepare again.'
    )


def largest_label_id(spec: DatasetSpec, split_stats: SplitStats) -> int | None:
    """The largest raw label id present that is not an ignore id (None if all are ignore)."""
    ids = [i for i in split_stats.raw_ids_seen if i not in spec.ignore_ids]
    return max(ids) if ids else None


def zero_pixel_classes(stats: DatasetStats) -> list[int]:
    """Class ids without a single pixel in any split."""
    total = np.sum([s.class_pixels for s in stats.splits.values()], axis=0)
    return [int(c) for c in np.flatnonzero(total == 0)]


def absent_classes(stats: DatasetStats, split: str) -> list[int] | None:
    """Class ids with no pixel in `split` (a name or expression); None if the split is unknown."""
    names = split_names(split)
    if not names or any(s not in stats.splits for s in names):
        return None
    total = np.sum([stats.splits[s].class_pixels for s in names], axis=0)
    return [int(c) for c in np.flatnonzero(total == 0)]


def _named(ids, class_names, limit: int = 12) -> str:
    shown = ", ".join(f"{i} {class_names[i]}" for i in list(ids)[:limit])
    return f"{len(ids)} ({shown}{', ...' if len(ids) > limit else ''})"


def summary(spec: DatasetSpec, stats: DatasetStats, *, eval_split: str | None = None) -> str:
    """A few lines: images, largest image, ignore share and largest raw id per split; classes
    with 0 pixels; classes absent from the eval split; where the file is."""
    eval_split = eval_split or spec.eval_split
    names = stats.class_names
    width = max([5] + [len(s) for s in stats.splits])
    lines = [
        f"{spec.name}: {len(names)} classes; {stats.path}",
        f"  {'split':<{width}}  {'images':>7}  {'largest HxW':>11}  {'ignore':>7}  "
        "largest label id",
    ]
    for name, s in stats.splits.items():
        hw = f"{s.max_image_shape[0]}x{s.max_image_shape[1]}"
        largest = largest_label_id(spec, s)
        lines.append(
            f"  {name:<{width}}  {s.num_images:>7}  {hw:>11}  {100 * s.ignore_share:>6.2f}%  "
            f"{'-' if largest is None else largest}"
        )
    zero = zero_pixel_classes(stats)
    lines.append(f"  classes with 0 pixels (all splits): {_named(zero, names) if zero else 'none'}")
    absent = absent_classes(stats, eval_split)
    if absent is None:
        lines.append(f"  eval split {eval_split!r}: not among the prepared splits")
    else:
        lines.append(
            f"  classes absent from the eval split {eval_split!r}: "
            f"{_named(absent, names) if absent else 'none'} (their IoU is NaN / null)"
        )
    return "\n".join(lines)


def class_table(stats: DatasetStats) -> str:
    """Per class and split: share of the labelled pixels (%) and number of images holding it."""
    names = stats.class_names
    width = max([8] + [len(n) for n in names])
    splits = list(stats.splits)
    cols = {s: max(8, len(s) + 4) for s in splits}
    head = f"  {'id':>3}  {'class':<{width}}" + "".join(
        f"  {s + ' px%':>{cols[s]}}  {'images':>6}" for s in splits
    )
    lines = [head]
    for c, name in enumerate(names):
        row = f"  {c:>3}  {name:<{width}}"
        for s in splits:
            st = stats.splits[s]
            row += f"  {100 * st.pixel_share[c]:>{cols[s]}.3f}  {st.class_images[c]:>6}"
        lines.append(row)
    ignore = f"  {'':>3}  {'(ignore)':<{width}}" + "".join(
        f"  {100 * stats.splits[s].ignore_share:>{cols[s] - 1}.3f}*  {'':>6}" for s in splits
    )
    lines.append(ignore.rstrip())
    lines.append("  px%: share of the split's labelled pixels; *: share of all its pixels")
    return "\n".join(lines)
