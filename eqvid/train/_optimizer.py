"""AdamW with a warm-up/cosine schedule and clipping, one optimiser group per role.

The groups, the weight-decay mask and the frozen parameters all come from the roles
the layers declare (`eqvid.nn.role`); the settings of each group from the model's
`optimizer_groups()`. Nothing here knows a field name.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import PyTree

from ..models import AbstractModel, GroupSettings
from ..nn._roles import ParamRole
from ._config import OptimizerConfig


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `lr`, then cosine decay to `end_lr_scale · lr` at `total_steps`."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=config.lr * config.end_lr_scale,
    )


class _StartState(NamedTuple):
    inner: Any
    updates: jax.Array
    """Updates seen so far (skipped ones included)."""


def start_at(inner: optax.GradientTransformation, start_step: int) -> optax.GradientTransformation:
    """`inner`, but only from training step `start_step` (1-based) on: before it the
    updates are zero and `inner`'s state does not advance."""

    def init(params):
        return _StartState(inner.init(params), jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        def run(_):
            return inner.update(updates, state.inner, params)

        def skip(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, new_inner = jax.lax.cond(state.updates + 1 >= start_step, run, skip, None)
        return new_updates, _StartState(new_inner, state.updates + 1)

    return optax.GradientTransformation(init, update)


def clip_by_objective(max_norm: float, objectives: PyTree[str]) -> optax.GradientTransformation:
    """Global-norm clipping done separately for the parameters of each objective
    (`objectives`: a tree of objective names like the updates): a discriminator's
    gradients never scale the generator's. With one objective this is
    `optax.clip_by_global_norm`."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        names = sorted(set(jax.tree.leaves(objectives)))
        clipped = updates
        for name in names:
            mine = jax.tree.map(
                lambda g, o, name=name: g if o == name else None, updates, objectives
            )
            norm = optax.global_norm(mine)

            def clip(g, o, name=name, norm=norm):
                if o != name:
                    return g
                # optax.clip_by_global_norm's arithmetic, so one objective matches it exactly.
                return jnp.where(norm < max_norm, g, (g / norm.astype(g.dtype)) * max_norm)

            clipped = jax.tree.map(clip, clipped, objectives)
        return clipped, state

    return optax.GradientTransformation(init, update)


def make_optimizer(
    config: OptimizerConfig,
    model: AbstractModel,
    roles: PyTree[ParamRole],
    total_steps: int,
) -> optax.GradientTransformation:
    """The optimiser of `model`'s trainable parameters: global-norm clipping per
    objective, then AdamW per group.

    `roles` holds the resolved role of each trainable parameter, in the tree of those
    parameters (as `train` partitions them); each parameter joins the group its role
    names (weight decay where its role allows it), and each group uses the
    `GroupSettings` that `model.optimizer_groups()` gives it (defaults otherwise). A
    group that starts late follows the run's schedule from where the run is (its
    warm-up is not restarted), while its Adam moments start fresh."""
    schedule = learning_rate_schedule(config, total_steps)
    declared = model.optimizer_groups()
    is_role = lambda x: isinstance(x, ParamRole)
    all_roles = jax.tree.leaves(roles, is_leaf=is_role)
    # One optax partition per group; a group whose parameters differ in weight decay
    # is split in two (the part without gets a " (no weight decay)" label).
    mixed = {
        g
        for g in {r.group for r in all_roles}
        if len({r.weight_decay for r in all_roles if r.group == g}) > 1
    }

    def label(r: ParamRole) -> str:
        return (
            f"{r.group} (no weight decay)"
            if r.group in mixed and not r.weight_decay
            else str(r.group)
        )

    labels = jax.tree.map(label, roles, is_leaf=is_role)
    partitions = {label(r): (str(r.group), bool(r.weight_decay)) for r in all_roles}

    def group_optimizer(group: str, weight_decay: bool) -> optax.GradientTransformation:
        s = declared.get(group, GroupSettings())
        offset = s.start_step - 1  # its first update is the run's step `start_step`
        opt = optax.adamw(
            lambda count: s.lr_scale * schedule(count + offset),
            b1=config.b1 if s.b1 is None else s.b1,
            b2=config.b2 if s.b2 is None else s.b2,
            weight_decay=config.weight_decay if weight_decay else 0.0,
        )
        return start_at(opt, s.start_step) if s.start_step > 1 else opt

    transform = optax.multi_transform(
        {label: group_optimizer(*partitions[label]) for label in sorted(partitions)},
        # A function: optax would call the labels if given a callable pytree.
        lambda _: labels,
    )
    if config.grad_clip > 0:
        objectives = jax.tree.map(lambda r: str(r.objective), roles, is_leaf=is_role)
        return optax.chain(clip_by_objective(config.grad_clip, objectives), transform)
    return transform
