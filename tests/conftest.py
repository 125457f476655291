import os
import pathlib
import tempfile

import jax
import pytest

# A persistent compilation cache shared by the test workers, the processes the tests
# start, and later runs: most of the suite's time is XLA compiling the same small
# programs (parameter initialisers, tiny models) again in every worker. Set through the
# environment so that child processes inherit it. EQVID_TEST_JAX_CACHE=0 turns it off.
if os.environ.get("EQVID_TEST_JAX_CACHE", "1") == "1":
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR",
        str(pathlib.Path(tempfile.gettempdir()) / "eqvid-test-jax-cache"),
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
else:
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # children compile afresh too
    jax.config.update("jax_compilation_cache_dir", None)


def _atomic_cache_writes() -> None:
    """Make the persistent cache's writes atomic in the test workers. JAX writes an
    entry in place (`Path.write_bytes`, no lock unless size-bounded eviction is on,
    which rescans the whole folder on every write), so a worker reading an entry that
    another is still writing deserialises a torn executable and crashes (seen as a
    segfault in `compilation_cache.get_executable_and_time`). Write to a private
    temporary file and rename it into place instead: a reader sees no entry or a whole
    one."""
    try:
        from jax._src import lru_cache
    except ImportError:  # another cache implementation: leave it as it is
        return
    put = getattr(lru_cache.LRUCache, "put", None)
    suffix = getattr(lru_cache, "_CACHE_SUFFIX", None)
    if put is None or suffix is None:
        return

    def atomic_put(self, key: str, value: bytes) -> None:
        if getattr(self, "eviction_enabled", True) or not key:
            return put(self, key, value)
        path = pathlib.Path(self.path) / f"{key}{suffix}"
        if path.exists():
            return None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(value)
        os.replace(tmp, path)
        return None

    lru_cache.LRUCache.put = atomic_put


if os.environ.get("EQVID_TEST_JAX_CACHE", "1") == "1":
    _atomic_cache_writes()

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


MAX_MAPPINGS = 30_000
"""Release JAX's compiled programs once a worker holds this many memory mappings."""


def _mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no per-process mapping limit to watch
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Every compiled XLA:CPU program keeps a few memory mappings of JIT code alive
    while JAX caches it, and Linux caps a process at `vm.max_map_count` (65,530 by
    default). A worker running hundreds of tests crossed it and crashed inside XLA (a
    segfault or abort in compilation or in (de)serialising a cached program, in a
    different test each time). After each test, once the worker holds `MAX_MAPPINGS`,
    JAX's in-memory caches are cleared (programs still needed come back from the
    persistent cache)."""
    yield
    if _mappings() > MAX_MAPPINGS:
        import gc

        jax.clear_caches()
        gc.collect()
