"""The training step as one sharded `jax.jit`: shardings on inputs and outputs,
donated state, gradient accumulation over micro-batches, mixed precision."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from ._mesh import BATCH_AXES, batch_sharding, check_batch, tree_shardings

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# State-space parameters stay float32 in mixed precision: |Λ̄| is within 1e-3 of 1 and
# bfloat16 would round it (and the step sizes) enough to change long-range behaviour.
KEEP_FLOAT32 = frozenset({"lambda_re", "lambda_im", "log_step", "B"})


def _cast_floats(tree: PyTree, dtype) -> PyTree:
    """Real floating-point arrays to `dtype`, except the state-space parameters
    (`KEEP_FLOAT32`); complex and integer arrays unchanged."""

    def cast(path, x):
        name = getattr(path[-1], "name", None) if path else None
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating) and name not in KEEP_FLOAT32:
            return x.astype(dtype)
        return x

    return jax.tree_util.tree_map_with_path(cast, tree)


def shard_state(model, opt_state, mesh: Mesh, min_fsdp_size: int = 2**14):
    """Place a model's parameters and its optimiser state on `mesh` by eqvid's rules
    (`eqvid.train._mesh`). Returns `(model, opt_state)` as new buffers: the step
    donates them, and the arrays passed in stay usable."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    shardings = (
        tree_shardings(params, mesh, min_fsdp_size),
        tree_shardings(opt_state, mesh, min_fsdp_size),
    )
    # A jitted identity writes fresh buffers (`device_put` may hand back the same ones).
    params, opt_state = jax.jit(lambda tree: tree, out_shardings=shardings)((params, opt_state))
    return eqx.combine(params, static), opt_state


def make_sharded_train_step(
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    accumulate: int = 1,
    compute_dtype: str = "float32",
    min_fsdp_size: int = 2**14,
    loss_fn: Callable | None = None,
):
    """A jitted `(model, opt_state, videos, actions=None, key=None) → (model,
    opt_state, loss, grad_norm)` over `mesh`.

    - `videos` `(batch, time, height, width, channels)` (and `actions`
      `(batch, time)`, if given) are split over the mesh's `data × fsdp` axes;
      parameters and optimiser state are kept where `shard_state` put them (the
      outputs carry the same shardings, and the inputs are donated).
    - `key`: the step's randomness; each video gets its own key from it (split
      over the batch, so the result does not depend on the mesh), passed to
      `model.loss(..., key=...)`. `None` runs the loss without randomness.
    - `accumulate = k`: the batch is cut into `k` micro-batches (video `i` goes to
      micro-batch `i mod k`, so each is spread over every device), their gradients
      summed in a `lax.scan` and averaged: the same update as the whole batch at
      once, with about `1/k` of the activation memory.
    - `compute_dtype`: `"bfloat16"` (or `"float16"`) runs the model with real
      floating-point parameters and inputs cast to it, while the parameters
      (master weights), gradients and optimiser state stay float32.
    - `loss_fn(model, videos, actions, keys) → scalar` defaults to the batch mean
      of `model.loss` (`actions` and `keys` may be None).
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be ≥ 1, got {accumulate}.")
    if compute_dtype not in DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {compute_dtype!r}.")
    dtype = DTYPES[compute_dtype]
    data = batch_sharding(mesh)
    micro = NamedSharding(mesh, PartitionSpec(None, BATCH_AXES))
    if loss_fn is None:

        def loss_fn(model, videos, actions, keys):
            def one(v, a, k):
                return model.loss(v, a, key=k)

            return jnp.mean(jax.vmap(one)(videos, actions, keys))

    def constrain(tree):
        return jax.lax.with_sharding_constraint(tree, tree_shardings(tree, mesh, min_fsdp_size))

    # The batch goes first so that "all-except-first" donates exactly the model and
    # the optimiser state (their buffers are reused for the outputs).
    @eqx.filter_jit(donate="all-except-first")
    def sharded_step(inputs, model, opt_state):
        videos, actions, key = inputs
        b = videos.shape[0]
        check_batch(b, mesh, "the batch size")
        if b % accumulate:
            raise ValueError(
                f"the batch size ({b}) must be divisible by accumulate ({accumulate})."
            )
        check_batch(
            b // accumulate, mesh, f"the micro-batch size (batch {b} / accumulate {accumulate})"
        )
        if actions is not None and actions.shape != videos.shape[:2]:
            raise ValueError(
                f"`actions` must be (batch, time) = {videos.shape[:2]} to match the videos; "
                f"got {actions.shape}."
            )
        params, static = eqx.partition(model, eqx.is_inexact_array)
        params, opt_state = constrain(params), constrain(opt_state)
        keys = None if key is None else jax.random.split(key, b)
        batch = jax.lax.with_sharding_constraint((videos, actions, keys), data)

        def micro_loss(p, batch):
            v, a, k = batch
            m = eqx.combine(_cast_floats(p, dtype), static)
            return loss_fn(m, v.astype(dtype), a, k).astype(jnp.float32)

        grad_fn = jax.value_and_grad(micro_loss)
        if accumulate == 1:
            loss, grads = grad_fn(params, batch)
        else:

            def split(x):
                x = x.reshape((b // accumulate, accumulate) + x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x, micro)

            parts = jax.tree.map(split, batch)

            def body(carry, part):
                loss_sum, grad_sum = carry
                loss, grads = grad_fn(params, part)
                return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), parts)
            loss = loss / accumulate
            grads = jax.tree.map(lambda g: g / accumulate, grads)
        grads = constrain(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = constrain(optax.apply_updates(params, updates))
        return eqx.combine(params, static), constrain(opt_state), loss, optax.global_norm(grads)

    def step(model, opt_state, videos, actions=None, key=None):
        return sharded_step((videos, actions, key), model, opt_state)

    return step
