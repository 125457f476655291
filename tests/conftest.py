import jax
import pytest

# Eight simulated CPU devices for the sharding tests (must precede any jax computation;
# single-device tests run on device 0 as before).
jax.config.update("jax_num_cpu_devices", 8)


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
