"""The training step: one sharded `jax.jit` for every model family.

What it does with each parameter follows the parameter's role (`eqvid.nn.role`):
frozen parameters get no gradient and no optimiser state, keep-float32 ones are not
cast under mixed precision, the `model` mesh axis splits the dimension the role
names, and a parameter whose objective is a loss term (a discriminator) descends
that term instead of the loss. Model state (`eqx.nn.State`) is threaded through the
micro-batches, and an exponential moving average of the parameters is kept on
request. On one device this is simply the one-device mesh.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Int, Key, PyTree, Scalar

from ..models import AbstractModel, VideoBatch
from ..nn._roles import ParamRole, parameter_roles
from ._mesh import BATCH_AXES, batch_sharding, check_batch, tree_shardings

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

RESERVED_METRICS = frozenset({"loss", "lr", "frames_per_s", "elapsed_s"})
"""Metric names the training log writes itself; a loss term may not take one."""


class TrainState(eqx.Module):
    """Everything a training step updates: the trainable parameters (a model-shaped
    tree, `None` elsewhere), the optimiser state, the model state (`None` if the
    model has none) and the moving average of the parameters (`None` if off)."""

    params: PyTree
    opt_state: PyTree
    model_state: eqx.nn.State | None
    ema: PyTree | None


class ParameterPlan:
    """What training reads from the roles of a model's parameters, once, before
    tracing: which arrays are trained (`trainable`, a filter spec over the model),
    each floating-point array's resolved role by `jax.tree_util.keystr` path
    (`roles`), and the objectives the trained parameters descend (`objectives`,
    `"loss"` first)."""

    trainable: PyTree[bool]
    roles: dict[str, ParamRole]
    objectives: tuple[str, ...]

    def __init__(self, model: AbstractModel):
        roles_tree = parameter_roles(model)
        flat, _ = jax.tree_util.tree_flatten_with_path(
            roles_tree, is_leaf=lambda x: x is None or isinstance(x, ParamRole)
        )
        self.roles = {jax.tree_util.keystr(p): r for p, r in flat if r is not None}
        self.trainable = jax.tree.map(
            lambda r: r is not None and not r.frozen,
            roles_tree,
            is_leaf=lambda x: x is None or isinstance(x, ParamRole),
        )
        objectives = {str(r.objective) for r in self.roles.values() if not r.frozen}
        self.objectives = tuple(sorted(objectives, key=lambda o: (o != "loss", o)))

    def role_of(self, path) -> ParamRole:
        return self.roles[jax.tree_util.keystr(path)]

    def partition(self, model: AbstractModel) -> tuple[PyTree, PyTree]:
        """`(trainable parameters, the rest)`: the rest holds frozen arrays and every
        non-array leaf; `eqx.combine` puts them back together."""
        return eqx.partition(model, self.trainable)

    def model_dims(self) -> dict[str, int | None]:
        """Each parameter's dimension on the `model` mesh axis (by path)."""
        return {path: role.model_dim() for path, role in self.roles.items()}

    def trainable_roles(self, params: PyTree) -> PyTree[ParamRole]:
        """The roles in the tree of the trainable parameters."""
        return jax.tree_util.tree_map_with_path(lambda p, _: self.role_of(p), params)

    def cast(self, tree: PyTree, dtype) -> PyTree:
        """Real floating-point arrays of a model-shaped `tree` to `dtype`, except those
        whose role keeps them float32; other leaves unchanged."""
        if dtype == jnp.float32:
            return tree

        def one(path, x):
            if (
                eqx.is_array(x)
                and jnp.issubdtype(x.dtype, jnp.floating)
                and not self.role_of(path).keep_float32
            ):
                return x.astype(dtype)
            return x

        return jax.tree_util.tree_map_with_path(one, tree)


def init_train_state(
    model: AbstractModel,
    model_state: eqx.nn.State | None,
    optimizer: optax.GradientTransformation,
    plan: ParameterPlan,
    mesh: Mesh,
    *,
    ema: bool = False,
    min_fsdp_size: int = 2**14,
) -> tuple[TrainState, PyTree]:
    """`(train_state, rest)` for `model` placed on `mesh` by eqvid's rules: trainable
    parameters, their optimiser state (and moving average) and the frozen rest of the
    model. New buffers: the step donates the train state."""
    params, rest = plan.partition(model)
    train_state = TrainState(
        params=params,
        opt_state=optimizer.init(params),
        model_state=model_state,
        ema=params if ema else None,
    )
    return place(train_state, rest, plan, mesh, min_fsdp_size)


def shardings(tree: PyTree, plan: ParameterPlan, mesh: Mesh, min_fsdp_size: int) -> PyTree:
    """Where each array of a train state (or of the model's rest) lives on `mesh`."""
    return tree_shardings(tree, mesh, min_fsdp_size, plan.model_dims())


def place(
    train_state: TrainState, rest: PyTree, plan: ParameterPlan, mesh: Mesh, min_fsdp_size: int
) -> tuple[TrainState, PyTree]:
    """Copy a train state and the model's rest onto `mesh` (fresh buffers: `device_put`
    may hand back the ones passed in, which the step would then donate)."""
    arrays, static = eqx.partition((train_state, rest), eqx.is_array)
    target = shardings(arrays, plan, mesh, min_fsdp_size)
    arrays = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=target)(arrays)
    return eqx.combine(arrays, static)


def make_train_step(
    optimizer: optax.GradientTransformation,
    plan: ParameterPlan,
    mesh: Mesh,
    *,
    accumulate: int = 1,
    compute_dtype: str = "float32",
    ema_decay: float = 0.0,
    min_fsdp_size: int = 2**14,
) -> "TrainStep":
    """A jitted `(train_state, rest, batch, key, step) → (train_state, metrics)` over
    `mesh` (a `TrainStep`); `metrics` holds the loss, every loss term and the gradient
    norm.

    - `batch`: a `VideoBatch`, split over the mesh's `data × fsdp` axes; the train
      state stays where `init_train_state` put it (outputs carry the same shardings,
      and the train state is donated).
    - `key`: the step's randomness; each video gets its own key from it (split over
      the batch, so the result depends neither on the mesh nor on `accumulate`).
      `None` runs the loss without randomness.
    - `step`: the 1-based training step, passed to the loss.
    - `accumulate = k`: the batch is cut into `k` micro-batches (video `i` goes to
      micro-batch `i mod k`, so each is spread over every device), their gradients
      summed in a `lax.scan` (the model state threaded through) and averaged: the
      same parameter update as the whole batch at once, with about `1/k` of the
      memory (model state that keeps statistics, e.g. EMA codebooks, is updated
      once per micro-batch).
    - `compute_dtype`: `"bfloat16"` / `"float16"` run the model with its real
      floating-point arrays and the videos cast to it, except the parameters whose
      role keeps them float32; master weights, gradients and optimiser state stay
      float32.
    - `ema_decay`: with a train state that has `ema`, the average moves by
      `ema ← ema + (1 - d)·(params - ema)` after the update of step `t`, with
      `d = min(ema_decay, (1 + t) / (10 + t))` (TensorFlow's warm-up).
    - `metrics["grad_norm"]` is the norm of the loss's gradients (before clipping);
      parameters on another objective add `grad_norm_<objective>`.
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be ≥ 1, got {accumulate}.")
    if compute_dtype not in DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {compute_dtype!r}.")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}.")
    dtype = DTYPES[compute_dtype]
    data = batch_sharding(mesh)
    micro = NamedSharding(mesh, PartitionSpec(None, BATCH_AXES))
    objectives = plan.objectives

    def constrain(tree):
        return jax.lax.with_sharding_constraint(tree, shardings(tree, plan, mesh, min_fsdp_size))

    def micro_step(params, rest, model_state, part: VideoBatch, keys, step):
        """Gradients of one micro-batch: `(grads, (loss, terms, model_state))`."""

        def losses(p):
            model = eqx.combine(plan.cast(p, dtype), plan.cast(rest, dtype))
            video = None if part.video is None else part.video.astype(dtype)
            loss, terms, new_state = model.loss(
                VideoBatch(video, part.actions, part.codes), model_state, key=keys, step=step
            )
            loss = loss.astype(jnp.float32)
            terms = {k: v.astype(jnp.float32) for k, v in terms.items()}
            reserved = sorted(set(terms) & RESERVED_METRICS) + [
                k for k in sorted(terms) if k.startswith("grad_norm")
            ]
            if reserved:
                raise ValueError(
                    f"{type(model).__name__}.loss returned terms named {reserved}, names the "
                    f"training log uses for itself ({sorted(RESERVED_METRICS)}, grad_norm*); "
                    "rename them."
                )
            missing = [o for o in objectives if o != "loss" and o not in terms]
            if missing:
                raise ValueError(
                    f"{type(model).__name__}.loss returned no term {missing}, but parameters "
                    f"declare it as their objective (terms: {sorted(terms)})."
                )
            values = {o: loss if o == "loss" else terms[o] for o in objectives}
            return values, (loss, terms, new_state)

        if objectives == ("loss",):

            def main_loss(p):
                values, aux = losses(p)
                return values["loss"], aux

            (_, aux), grads = jax.value_and_grad(main_loss, has_aux=True)(params)
            return grads, aux
        values, pullback, aux = jax.vjp(losses, params, has_aux=True)
        grads = jax.tree.map(jnp.zeros_like, params)
        for objective in objectives:
            cotangent = {o: jnp.asarray(o == objective, v.dtype) for o, v in values.items()}
            (g,) = pullback(cotangent)
            grads = jax.tree_util.tree_map_with_path(
                lambda path, acc, new, o=objective: (
                    new if plan.role_of(path).objective == o else acc
                ),
                grads,
                g,
            )
        return grads, aux

    # The batch (and the frozen rest) go first, so that "all-except-first" donates
    # exactly the train state (its buffers are reused for the outputs).
    @eqx.filter_jit(donate="all-except-first")
    def sharded_step(inputs, train_state: TrainState):
        rest, batch, key, step = inputs
        b = batch.size
        check_batch(b, mesh, "the batch size")
        if b % accumulate:
            raise ValueError(
                f"the batch size ({b}) must be divisible by accumulate ({accumulate})."
            )
        check_batch(
            b // accumulate, mesh, f"the micro-batch size (batch {b} / accumulate {accumulate})"
        )
        params = constrain(train_state.params)
        opt_state = constrain(train_state.opt_state)
        keys = None if key is None else jax.random.split(key, b)
        batch, keys = jax.lax.with_sharding_constraint((batch, keys), data)
        if accumulate == 1:
            grads, (loss, terms, model_state) = micro_step(
                params, rest, train_state.model_state, batch, keys, step
            )
        else:

            def split(x):
                x = x.reshape((b // accumulate, accumulate) + x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x, micro)

            parts = jax.tree.map(split, (batch, keys))

            def body(carry, part):
                grad_sum, model_state = carry
                grads, (loss, terms, model_state) = micro_step(
                    params, rest, model_state, part[0], part[1], step
                )
                return (jax.tree.map(jnp.add, grad_sum, grads), model_state), (loss, terms)

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, model_state), (losses, terms) = jax.lax.scan(
                body, (zeros, train_state.model_state), parts
            )
            grads = jax.tree.map(lambda g: g / accumulate, grads)
            loss = jnp.mean(losses)
            terms = {k: jnp.mean(v) for k, v in terms.items()}
        grads = constrain(grads)
        # optax relies on implicit promotion (`b1 ** count`, float ** int32): give it
        # JAX's standard rules even where a program (or test) runs with strict ones.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        params = constrain(optax.apply_updates(params, updates))
        ema = train_state.ema
        if ema is not None:
            # Warmed up as TensorFlow's ExponentialMovingAverage(num_updates=step): early
            # averages do not hold on to the initial weights.
            t = step.astype(jnp.float32)
            decay = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
            ema = constrain(jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), ema, params))
        metrics = {"loss": loss, **terms}
        for objective in objectives:
            name = "grad_norm" if objective == "loss" else f"grad_norm_{objective}"
            metrics[name] = optax.global_norm(
                jax.tree_util.tree_map_with_path(
                    lambda path, g, o=objective: g if plan.role_of(path).objective == o else None,
                    grads,
                )
            )
        return TrainState(params, constrain(opt_state), model_state, ema), metrics

    return TrainStep(sharded_step)


class TrainStep:
    """The jitted train step (`make_train_step`): call it, or `lower` it to look at the
    compiled program (memory, HLO), or `compile` it ahead of the first call."""

    def __init__(self, jitted):
        self._jitted = jitted
        self._compiled = None

    @staticmethod
    def _inputs(rest, batch, key, step):
        return (rest, batch, key, jnp.asarray(step, jnp.int32))

    def __call__(
        self,
        train_state: TrainState,
        rest: PyTree,
        batch: VideoBatch,
        key: Key[Array, ""] | None,
        step: Int[Array, ""] | int,
    ) -> tuple[TrainState, dict[str, Scalar]]:
        """`(train_state, metrics)` after one step on `batch` (the train state passed in
        is donated: use the one returned)."""
        inputs = self._inputs(rest, batch, key, step)
        if self._compiled is not None:
            return self._compiled(inputs, train_state)
        return self._jitted(inputs, train_state)

    def compile(
        self,
        train_state: TrainState,
        rest: PyTree,
        batch: VideoBatch,
        key: Key[Array, ""] | None,
        step: Int[Array, ""] | int,
    ) -> None:
        """Compile the step for arguments shaped and sharded as these (nothing runs, and
        nothing is donated); every later call runs that program. A multi-process run
        compiles first and then waits for every process, so that no process reaches the
        step's first collective while another is still compiling (the CPU collectives
        give up after 30 s)."""
        inputs = self._inputs(rest, batch, key, step)
        self._compiled = self._jitted.lower(inputs, train_state).compile()

    def lower(
        self,
        train_state: TrainState,
        rest: PyTree,
        batch: VideoBatch,
        key: Key[Array, ""] | None,
        step: Int[Array, ""] | int,
    ) -> jax.stages.Lowered:
        """The step lowered for these arguments (`.compile().memory_analysis()` gives
        its memory)."""
        return self._jitted.lower(self._inputs(rest, batch, key, step), train_state).lowered
