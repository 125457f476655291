import os
import pathlib
import tempfile

import jax
import pytest

# A persistent compilation cache shared by the test workers, the processes the tests
# start, and later runs: most of the suite's time is XLA compiling the same small
# programs (parameter initialisers, tiny models) again in every worker. Set through the
# environment so that child processes inherit it.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(tempfile.gettempdir()) / "eqvid-test-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Eight simulated CPU devices for the sharding tests (must precede any jax computation;
# single-device tests run on device 0 as before).
jax.config.update("jax_num_cpu_devices", 8)
# As Equinox's own tests: no silent dtype promotion (float32 + bfloat16 must be cast
# explicitly) and no implicit rank promotion (`(3,) + (2, 3)` raises).
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A fresh `jax.random` key on every call (seeded per test for reproducibility)."""
    keys = iter(jax.random.split(jax.random.key(1234), 1000))
    return lambda: next(keys)


def pytest_configure(config):
    # Grain 0.2.x reads absl flags in worker processes; mark them parsed once.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
