"""Parameter roles, declared where a parameter is defined and read by training.

A layer declares a role in a field's metadata, `eqx.field(metadata=role(...))`:

```python
class ConvS5(eqx.Module):
    lambda_re: Float[Array, " state"] = eqx.field(
        metadata=role(group="ssm", weight_decay=False, keep_float32=True)
    )
    ...
class TransformerBlock(eqx.Module):
    mlp_in: Dense = eqx.field(metadata=role(model_axis="out"))  # hidden units over `model`
    ...
class VQGAN(eqx.Module):
    discriminator: PatchDiscriminator = eqx.field(
        metadata=role(group="discriminator", objective="discriminator_loss")
    )
```

A role declared on a field holding a sub-module (or a tuple of them) applies to every
array inside it. Where declarations meet, what a part *is for* is decided from the
outside (`group`, `objective`, `frozen`, `model_axis`: a discriminator built from
ConvS5 layers trains as the discriminator, in its group), and what a parameter *is*
from the inside (`weight_decay`, `keep_float32`, `axes`: Λ never decays, wherever
the layer sits). Training
(`eqvid.train`) reads the resolved roles to build the optimiser groups, the
weight-decay mask, the mixed-precision cast, the `model` mesh axis and the parts that
are frozen or trained on their own objective: renaming a field never changes them.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree

ROLE_KEY = "eqvid_role"
"""The key of a `ParamRole` in a dataclass field's metadata."""


@dataclasses.dataclass(frozen=True)
class ParamRole:
    """What training does with a parameter. `None` means "inherit" (from the field
    that holds the enclosing module); `resolved()` fills in the defaults."""

    group: str | None = None
    """Optimiser group (its own learning-rate scale, betas and start step; see
    `AbstractVideoModel.optimizer_groups`). Default `"default"`."""
    weight_decay: bool | None = None
    """Apply decoupled weight decay. Default True."""
    keep_float32: bool | None = None
    """Stay float32 when the model computes in bfloat16 / float16. Default False."""
    frozen: bool | None = None
    """Never trained: no gradient, no optimiser state, saved once per run instead of
    in every checkpoint (a pretrained tokenizer inside a model). Default False."""
    objective: str | None = None
    """The scalar this parameter descends: `"loss"` (the model's loss, the default),
    or the name of one of the loss's terms (a discriminator trains on its own term)."""
    axes: tuple[str, ...] | None = None
    """Names of the array's axes (`("in", "out")`, `("embed", "heads", "head_dim")`),
    so that an enclosing field can pick one for the `model` mesh axis."""
    model_axis: str | None = None
    """Which named axis (see `axes`) is split over the mesh's `model` axis (attention
    heads, MLP hidden units); unset: none."""

    def within(self, outer: "ParamRole") -> "ParamRole":
        """This (inner) role inside `outer`: `group`, `objective`, `frozen` and
        `model_axis` from `outer` where it sets them, the other attributes from this
        role where it sets them; each falls back to the other side when unset."""

        def pick(name: str):
            mine, theirs = getattr(self, name), getattr(outer, name)
            first, second = (theirs, mine) if name in OUTER_DECIDES else (mine, theirs)
            return second if first is None else first

        return ParamRole(**{f.name: pick(f.name) for f in dataclasses.fields(self)})

    def over(self, outer: "ParamRole") -> "ParamRole":
        """This role with the attributes it leaves unset taken from `outer`."""
        return ParamRole(
            **{
                f.name: getattr(outer, f.name)
                if getattr(self, f.name) is None
                else getattr(self, f.name)
                for f in dataclasses.fields(self)
            }
        )

    def resolved(self) -> "ParamRole":
        """Every attribute set: the defaults filled in."""
        return self.over(DEFAULT_ROLE)

    def model_dim(self) -> int | None:
        """The array dimension split over the `model` mesh axis, if any."""
        if self.model_axis is None or self.axes is None or self.model_axis not in self.axes:
            return None
        return self.axes.index(self.model_axis)


OUTER_DECIDES = frozenset({"group", "objective", "frozen", "model_axis"})
"""Role attributes that the outermost declaration decides (see the module docstring)."""

DEFAULT_ROLE = ParamRole(
    group="default",
    weight_decay=True,
    keep_float32=False,
    frozen=False,
    objective="loss",
    axes=None,
    model_axis=None,
)


def role(
    *,
    group: str | None = None,
    weight_decay: bool | None = None,
    keep_float32: bool | None = None,
    frozen: bool | None = None,
    objective: str | None = None,
    axes: tuple[str, ...] | None = None,
    model_axis: str | None = None,
) -> dict[str, ParamRole]:
    """Field metadata declaring the role of the parameters a field holds, for
    `eqx.field(metadata=role(...))` (combine with other metadata by `|`); see
    `ParamRole` for each attribute."""
    return {
        ROLE_KEY: ParamRole(group, weight_decay, keep_float32, frozen, objective, axes, model_axis)
    }


def _field_role(node: Any, name: str) -> ParamRole | None:
    if not dataclasses.is_dataclass(node):
        return None
    for f in dataclasses.fields(node):
        if f.name == name:
            return f.metadata.get(ROLE_KEY)
    return None


def _role_at(root: Any, path: tuple) -> ParamRole:
    """The resolved role of the leaf at `path` (a `jax.tree_util` key path) in `root`:
    the declarations met on the way down, combined by `ParamRole.within`."""
    current = ParamRole()
    node = root
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            declared = _field_role(node, entry.name)
            if declared is not None:
                current = declared.within(current)
            node = getattr(node, entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey) and node is not None:
            node = node[entry.idx]
        elif isinstance(entry, jax.tree_util.DictKey) and node is not None:
            node = node[entry.key]
        else:  # flattened index (custom pytrees): no fields to declare roles on below
            node = None
    return current.resolved()


def parameter_roles(model: PyTree) -> PyTree[ParamRole | None]:
    """The resolved `ParamRole` of every floating-point array in `model` (`None` at
    every other leaf), in a tree of the model's structure (a `filter_spec` shape:
    `jax.tree.map` it against `eqx.filter(model, eqx.is_inexact_array)`)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(model)
    return jax.tree_util.tree_unflatten(
        treedef,
        [_role_at(model, path) if eqx.is_inexact_array(x) else None for path, x in leaves],
    )


def role_filter(model: PyTree, predicate) -> PyTree[bool]:
    """A boolean filter spec for `eqx.partition` / `eqx.filter`: True at the arrays
    whose resolved role satisfies `predicate(role)`."""
    roles = parameter_roles(model)
    return jax.tree.map(
        lambda r: r is not None and bool(predicate(r)),
        roles,
        is_leaf=lambda x: x is None or isinstance(x, ParamRole),
    )
