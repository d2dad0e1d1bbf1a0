"""Random access to the stored examples of a prepared split: an offset index over its TFRecords.

tfds stores our builds (and catalog builds made with `tfds build`) as uncompressed TFRecord shards,
which tf.data can only read front to back. A TFRecord file is a plain sequence of records
(uint64 little-endian length, 4-byte length checksum, the payload, 4-byte payload checksum), so
one pass over the record headers (12 bytes read per record, the payloads are skipped) gives every
record's offset; after that any example is one seek and one read. A training host then reads only
the examples of its own share of each global batch.

(tfds' own random access, `builder.as_data_source`, needs the dataset stored as ArrayRecord:
existing TFRecord builds cannot be opened that way, and ArrayRecord builds cannot be read by
`as_dataset`, which evaluation uses.)
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import tensorflow as tf

_HEADER = struct.Struct("<QI")  # payload length, masked CRC32C of the length
_FOOTER_BYTES = 4  # masked CRC32C of the payload


class RecordIndex:
    """The serialized examples of one split, in the split's order (`as_dataset` without file
    shuffling), by position: `len(index)`, `index.read(i) -> bytes`.

    `read` is thread-safe (tf.data calls it from several threads): each thread keeps its own open
    files.
    """

    def __init__(self, builder, split: str):
        info = builder.info
        file_format = getattr(info.file_format, "value", info.file_format)
        if file_format not in (None, "tfrecord"):
            raise ValueError(
                f"Dataset {info.name!r} in {builder.data_dir} is stored as {file_format}; the "
                "training stream reads TFRecord builds (the default of `python -m "
                "msc_seg.data.prepare` and `tfds build`)."
            )
        self._files: list[str] = []
        file_ids, offsets, lengths = [], [], []
        for instruction in info.splits[split].file_instructions:
            starts, sizes = _record_offsets(instruction.filename)
            stop = len(starts) if instruction.take < 0 else instruction.skip + instruction.take
            if stop > len(starts):
                raise ValueError(
                    f"{instruction.filename}: {len(starts)} records, the dataset info expects "
                    f"at least {stop}. Rebuild the dataset."
                )
            file_ids.append(np.full(stop - instruction.skip, len(self._files), np.int32))
            offsets.append(starts[instruction.skip : stop])
            lengths.append(sizes[instruction.skip : stop])
            self._files.append(instruction.filename)
        self._file_ids = np.concatenate(file_ids) if file_ids else np.zeros(0, np.int32)
        self._offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        self._lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self._offsets)

    def read(self, i: int) -> bytes:
        """The serialized example at position i of the split."""
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        file_id = int(self._file_ids[i])
        handle = handles.get(file_id)
        if handle is None:
            handle = handles[file_id] = tf.io.gfile.GFile(self._files[file_id], "rb")
        handle.seek(int(self._offsets[i]))
        data = handle.read(int(self._lengths[i]))
        if len(data) != self._lengths[i]:
            raise ValueError(f"{self._files[file_id]}: record {i} is truncated. Rebuild it.")
        return data


def _record_offsets(filename: str) -> tuple[np.ndarray, np.ndarray]:
    """(payload offsets, payload lengths) of every record of a TFRecord file, int64 [n]."""
    starts, sizes = [], []
    with tf.io.gfile.GFile(filename, "rb") as f:
        size = f.size()
        position = 0
        while position < size:
            f.seek(position)
            header = f.read(_HEADER.size)
            if len(header) != _HEADER.size:
                raise ValueError(f"{filename}: truncated record header at byte {position}.")
            length, _ = _HEADER.unpack(header)
            starts.append(position + _HEADER.size)
            sizes.append(length)
            position += _HEADER.size + length + _FOOTER_BYTES
        if position != size:
            raise ValueError(f"{filename}: the last record is truncated (not a TFRecord file?).")
    return np.asarray(starts, np.int64), np.asarray(sizes, np.int64)
