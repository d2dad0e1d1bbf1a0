"""Which example sits at each place of the global training stream (numpy only, no TensorFlow).

The stream is one sequence of global positions p = 0, 1, 2, ...: step t's global batch holds
positions [t * B, (t + 1) * B) in order (B = global batch). With S = N // B steps per epoch (the
N % B examples an epoch cannot fill a batch with are left out of it), position p is slot
k = p mod (S * B) of epoch e = p // (S * B), and holds example `permutation(e)[k]`, the epoch's
shuffle of the N example indices drawn from (seed, e). Process r of P takes rows
[r * b, (r + 1) * b) of every global batch (b = B / P).

Everything is a pure function of (seed, N, B) and the position, so the global batch of a step,
its order and (with per-position augmentation seeds) its augmentation are the same on any number
of processes, and a stream started at any step equals the unbroken stream from there on.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import numpy as np


def mix_seed(*values: int) -> int:
    """A well-mixed 31-bit seed from integers (fits tf.data and TF stateless seeds)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class GlobalOrder:
    """The global stream of `num_examples` examples in global batches of `global_batch`, and the
    share of process `process_index` of `process_count` (see the module docstring)."""

    num_examples: int
    global_batch: int
    seed: int
    process_index: int = 0
    process_count: int = 1
    _cache: dict = dataclasses.field(
        default_factory=collections.OrderedDict, init=False, repr=False, compare=False
    )
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self):
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"process_index={self.process_index} is not in [0, {self.process_count})."
            )
        if self.global_batch <= 0 or self.global_batch % self.process_count:
            raise ValueError(
                f"The global batch ({self.global_batch}, config field `batch_size`) must be a "
                f"positive multiple of the number of processes ({self.process_count})."
            )

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        """int64 [N]: the example indices of `epoch` in stream order (cached, thread-safe)."""
        with self._lock:
            perm = self._cache.get(epoch)
            if perm is None:
                rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), int(epoch)]))
                perm = self._cache[epoch] = rng.permutation(self.num_examples)
                while len(self._cache) > 3:  # Reads straddle at most two epochs at a time.
                    self._cache.popitem(last=False)
            return perm

    def position(self, local_index: int) -> int:
        """Global position of this process's `local_index`-th example (0, 1, ... from step 0)."""
        step, row = divmod(int(local_index), self.local_batch)
        return step * self.global_batch + self.process_index * self.local_batch + row

    def example(self, position: int) -> int:
        """Index (in the split's order) of the example at global position `position`."""
        epoch, slot = divmod(int(position), self.steps_per_epoch * self.global_batch)
        return int(self.permutation(epoch)[slot])
