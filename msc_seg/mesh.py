"""The device mesh: the only module that knows mesh axis names.

Parameters are replicated, batches are sharded along their leading axis over `data`. Host-local
batches (what this process's tf.data pipeline yields) become global `jax.Array`s here.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int = -1) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (-1 or 0: all) with axis `data`."""
    devices = jax.devices()
    n = len(devices) if num_devices in (-1, 0) else num_devices
    if n > len(devices):
        raise ValueError(f"mesh.data={num_devices} but only {len(devices)} devices are visible")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, everything else whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this host's slice of the global batch into global arrays sharded on `data`.

    Each host passes its own [b_local, ...] arrays; the global leading size is b_local times the
    number of processes.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }
