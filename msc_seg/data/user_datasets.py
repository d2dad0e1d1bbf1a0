"""Users' own folder datasets, registered without editing the package.

`register_folder_dataset(...)` (e.g. from a config file's `get_config`) or a JSON description file
(`register_dataset_file`: the config field `dataset.spec_file`, the prepare CLI's
`--dataset_file`) describes a dataset stored as ROOT/<image_dir>/<split>/NAME.* +
ROOT/<label_dir>/<split>/NAME.png, with id labels or RGB labels in the palette's colours; see
docs/DATASETS.md.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from msc_seg.data.conventions import PALETTE_IGNORE_ID
from msc_seg.data.registry import DatasetSpec, LabelFormat, default_palette, register_dataset


def _colour_tuples(colours, what: str) -> tuple[tuple[int, int, int], ...]:
    array = np.asarray(colours, dtype=np.int64).reshape(-1, 3) if len(colours) else np.zeros((0, 3))
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{what}: colour components must be in [0, 255].")
    return tuple(tuple(int(v) for v in c) for c in array)


def _check_palette_labels(name, palette, ignore_colors) -> None:
    """Palette-coded labels need one distinct colour per class, and ignore colours apart."""
    if len(palette) > PALETTE_IGNORE_ID:
        raise ValueError(
            f"Dataset {name!r}: palette labels support at most {PALETTE_IGNORE_ID} classes."
        )
    repeated = sorted({c for c in palette if palette.count(c) > 1})
    if repeated:
        raise ValueError(
            f"Dataset {name!r}: classes share the palette colours {repeated}; with "
            "label_format='palette' every class needs its own colour."
        )
    shared = sorted(set(palette) & set(ignore_colors))
    if shared:
        raise ValueError(f"Dataset {name!r}: colours {shared} are both class and ignore colours.")


def register_folder_dataset(
    name: str,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    *,
    label_format: LabelFormat = "ids",
    ignore_ids: Sequence[int] = (),
    label_offset: int = 0,
    ignore_colors: Sequence[Sequence[int]] = (),
    image_dir: str = "images",
    label_dir: str = "labels",
    train_split: str = "train",
    eval_split: str = "validation",
    max_image_shape: Sequence[int] | None = None,
    class_groups: Mapping[str, Sequence[int | str]] | None = None,
    download_hint: str = "",
    spec_file: str = "",
) -> DatasetSpec:
    """Registers a dataset stored as ROOT/<image_dir>/<split>/NAME.* + ROOT/<label_dir>/<split>/
    NAME.png and returns its spec; build it with `python -m msc_seg.data.prepare --dataset=NAME
    --data_dir=DIR --root=ROOT`.

    label_format "ids": labels hold raw ids; raw id k is class k - label_offset, ids in
    ignore_ids are ignored. label_format "palette": labels are RGB images in the class colours of
    `palette` (required then); `ignore_colors` mean ignore. `palette` defaults to
    `default_palette` for id labels. `class_groups` ({group name: class names or ids}) are
    reported as extra mIoUs over those classes (e.g. {"objects": [every class but background]}).
    `spec_file`: the JSON file the description comes from (named in errors).
    """
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"Dataset {name!r}: give the class names as a non-empty list.")
    class_names = tuple(str(c) for c in class_names)
    if label_format == "palette":
        if palette is None:
            raise ValueError(f"Dataset {name!r}: label_format='palette' needs the palette.")
        if ignore_ids or label_offset:
            raise ValueError(
                f"Dataset {name!r}: ignore_ids / label_offset apply to id labels; palette labels "
                "use ignore_colors."
            )
    palette = default_palette(len(class_names)) if palette is None else palette
    palette = _colour_tuples(palette, f"Dataset {name!r} palette")
    ignore_colors = _colour_tuples(ignore_colors, f"Dataset {name!r} ignore_colors")
    if label_format == "palette":
        _check_palette_labels(name, palette, ignore_colors)
        ignore_ids = (PALETTE_IGNORE_ID,)
    return register_dataset(
        DatasetSpec(
            name=name,
            tfds_name=name,
            class_names=class_names,
            palette=palette,
            train_split=train_split,
            eval_split=eval_split,
            source="folder",
            ignore_ids=tuple(int(i) for i in ignore_ids),
            label_offset=int(label_offset),
            image_dir=image_dir,
            label_dir=label_dir,
            label_format=label_format,
            ignore_colors=ignore_colors,
            download_hint=download_hint
            or f"Arrange the files as ROOT/{image_dir}/<split>/NAME.(jpg|png) and "
            f"ROOT/{label_dir}/<split>/NAME.png.",
            max_image_shape=tuple(int(v) for v in max_image_shape) if max_image_shape else None,
            class_groups=_class_groups(name, class_names, class_groups),
            spec_file=str(spec_file),
        )
    )


def _class_groups(name, class_names, groups) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """{group: class names or ids} -> ((group, class ids), ...); unknown names are errors."""
    if not groups:
        return ()
    if not isinstance(groups, Mapping):
        raise ValueError(
            f"Dataset {name!r}: class_groups must map a group name to a list of class names "
            'or ids, e.g. {"objects": ["car", "person"]}.'
        )
    out = []
    for group, members in groups.items():
        if isinstance(members, str | int) or not members:
            raise ValueError(
                f"Dataset {name!r}: class group {group!r} must be a non-empty list of class "
                "names or ids."
            )
        ids = []
        for m in members:
            if isinstance(m, str):
                if m not in class_names:
                    raise ValueError(
                        f"Dataset {name!r}: class group {group!r} names {m!r}, which is not in "
                        "classes."
                    )
                ids.append(class_names.index(m))
            elif isinstance(m, int) and 0 <= m < len(class_names):
                ids.append(int(m))
            else:
                raise ValueError(
                    f"Dataset {name!r}: class group {group!r} holds {m!r}; use class names or "
                    f"ids in [0, {len(class_names)})."
                )
        out.append((str(group), tuple(ids)))
    return tuple(out)


_FILE_FIELDS = {
    "name": "name",
    "classes": "class_names",
    "palette": "palette",
    "label_format": "label_format",
    "ignore_ids": "ignore_ids",
    "label_offset": "label_offset",
    "ignore_colors": "ignore_colors",
    "image_dir": "image_dir",
    "label_dir": "label_dir",
    "train_split": "train_split",
    "eval_split": "eval_split",
    "max_image_shape": "max_image_shape",
    "class_groups": "class_groups",
    "download_hint": "download_hint",
}


def register_dataset_file(path: str | pathlib.Path) -> DatasetSpec:
    """Registers the folder dataset described by a JSON file and returns its spec.

    The file holds an object with "name" and "classes" (required) and optionally the other
    arguments of `register_folder_dataset`: "palette", "label_format", "ignore_ids",
    "label_offset", "ignore_colors", "image_dir", "label_dir", "train_split", "eval_split",
    "max_image_shape", "class_groups", "download_hint" (docs/DATASETS.md describes each).
    Errors name the file.
    """
    path = pathlib.Path(path).expanduser()
    try:
        fields = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Dataset file {path}: cannot read it as JSON: {e}.") from None
    if not isinstance(fields, dict):
        raise ValueError(f"Dataset file {path}: expected a JSON object.")
    unknown = sorted(set(fields) - set(_FILE_FIELDS))
    missing = [k for k in ("name", "classes") if k not in fields]
    if unknown or missing:
        raise ValueError(
            f"Dataset file {path}: "
            + (f"unknown keys {unknown}; " if unknown else "")
            + (f"missing keys {missing}; " if missing else "")
            + f"known keys: {sorted(_FILE_FIELDS)}."
        )
    kwargs = {_FILE_FIELDS[k]: v for k, v in fields.items()}
    kwargs["spec_file"] = str(path)
    try:
        return register_folder_dataset(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"Dataset file {path}: {e}") from None
