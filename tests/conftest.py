"""Test set-up: 8 forced CPU devices, TensorFlow kept off accelerators, tiny shapes.

The XLA flag must be set before jax is first imported, so this module does it at import time.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
    # Tests are compile-bound on a 2-core CPU: fewer XLA backend optimisations cut compile times
    # by about half; numerics differ only by float rounding.
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests build the same tiny programs many times (each training run makes fresh closures): a
# persistent compilation cache turns the repeats into cache hits.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get(
        "MSC_SEG_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "msc_seg_jax_cache")
    ),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The ../shared folder beside the repository (data, golden outputs)."""
    return SHARED


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
