"""Checksums of the arrays in a checkpoint, computed on the device they live on.

Each array's bytes are read as 32-bit words `w_i` (narrower types widened, wider ones
split) and summarised by two sums modulo 2³²: `Σ w_i` and `Σ (i + 1)·w_i`. Any change
of one word changes the first; swapped or shifted words change the second. They cost
one pass over memory (no copy to the host), work on sharded arrays of any mesh, and
are stored in the checkpoint's metadata so that a restore can prove it read back what
was written.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree


def _words(x: jax.Array) -> jax.Array:
    """The bytes of `x` as a flat vector of uint32 words."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if jnp.iscomplexobj(x):
        x = jnp.stack([jnp.real(x), jnp.imag(x)])
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    if size == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32).ravel()
    if size == 1:
        return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32).ravel()
    return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 8 bytes: two words each


@jax.jit
def _sums(flat: dict[str, Any]) -> dict[str, jax.Array]:
    out = {}
    for path, x in flat.items():
        w = _words(x)
        index = jnp.arange(w.size, dtype=jnp.uint32) + jnp.uint32(1)
        out[path] = jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * index, dtype=jnp.uint32)])
    return out


def checksums(tree: PyTree) -> dict[str, list[int]]:
    """`{path: [Σ w, Σ (i+1)·w]}` for every array of `tree` (paths as
    `jax.tree_util.keystr`), ready for JSON."""
    flat = {
        jax.tree_util.keystr(path): jnp.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if isinstance(leaf, jax.Array | np.ndarray)
    }
    if not flat:
        return {}
    return {path: [int(v) for v in np.asarray(s)] for path, s in _sums(flat).items()}


def mismatches(stored: dict[str, list[int]], tree: PyTree) -> list[str]:
    """The paths whose checksum in `tree` differs from `stored` (or that only one
    side has)."""
    here = checksums(tree)
    return sorted(k for k in set(stored) | set(here) if stored.get(k) != here.get(k))
