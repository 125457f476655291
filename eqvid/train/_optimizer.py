"""AdamW with a warm-up/cosine schedule, clipping, and an SSM parameter group."""

import equinox as eqx
import jax
import optax
from jaxtyping import PyTree

from ..nn._convs5 import ConvS5
from ._config import OptimizerConfig

SSM_FIELDS = frozenset({"lambda_re", "lambda_im", "log_step", "B"})


def ssm_labels(model: eqx.Module) -> PyTree[str]:
    """Label each array leaf `"ssm"` (a ConvS5 layer's Λ, log Δ or B) or `"default"`."""
    params = eqx.filter(model, eqx.is_inexact_array)
    labels = jax.tree.map(lambda _: "default", params)

    def mark(layer):
        if isinstance(layer, ConvS5):
            return eqx.tree_at(
                lambda m: [getattr(m, f) for f in sorted(SSM_FIELDS)],
                layer,
                ["ssm"] * len(SSM_FIELDS),
            )
        return layer

    return jax.tree.map(mark, labels, is_leaf=lambda x: isinstance(x, ConvS5))


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


def make_optimizer(
    config: OptimizerConfig, model: eqx.Module, total_steps: int
) -> optax.GradientTransformation:
    """The optimiser for `model`: clipping, then AdamW per parameter group."""
    schedule = learning_rate_schedule(config, total_steps)

    def adamw(scale: float, weight_decay: float):
        return optax.adamw(
            lambda step: scale * schedule(step),
            b1=config.b1,
            b2=config.b2,
            weight_decay=weight_decay,
        )

    labels = ssm_labels(model)
    groups = optax.multi_transform(
        {
            "default": adamw(1.0, config.weight_decay),
            "ssm": adamw(config.ssm_lr_scale, 0.0),
        },
        # A function, because optax would call the labels if given the (callable) module.
        lambda _: labels,
    )
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), groups)
    return groups
