"""Datasets and the input pipeline.

- `MovingMNIST`: Moving-MNIST videos generated on the fly, a Grain random-access
  source returning `{"video": uint8 (time, height, width, 1)}`, deterministic per
  `(seed, index)`.
- `load_digits(mnist_path)`: digit images for it, from the MNIST
  `train-images-idx3-ubyte(.gz)` file (`load_idx_images`) or, offline, from
  scikit-learn's bundled handwritten digits (`sklearn_digits`).
- `make_dataset(source, batch_size=...)`: shuffle, repeat, shard over JAX processes,
  batch and convert to `{"video": float32 (batch, time, height, width, channels)}`
  in `[-1, 1]`; checkpointable Grain iterators.
"""

from ._mnist_digits import load_digits, load_idx_images, sklearn_digits
from ._moving_mnist import MovingMNIST
from ._pipeline import make_dataset

__all__ = ["MovingMNIST", "load_digits", "load_idx_images", "make_dataset", "sklearn_digits"]
