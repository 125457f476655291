"""Device meshes from a config, and where eqvid's arrays live on them.

A mesh has three axes: `data` (batch), `fsdp` (batch too, plus large parameters and
their optimiser state split along one dimension) and `model` (attention heads and
MLP hidden units of the transformer models). Rules, by array:

- batches `(batch, …)`: the batch axis over `data × fsdp`;
- parameters and optimiser state (the same rule, so Adam's moments sit with their
  parameter): the dimension their role names for the `model` axis (declared by the
  layer with `eqvid.nn.role(axes=..., model_axis=...)`: attention heads, MLP hidden
  units), if it divides; then, if the array has at least `min_fsdp_size` elements,
  its largest dimension divisible by the `fsdp` size (not already used) over
  `fsdp`; everything else replicated.
"""

import dataclasses
import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the device mesh's axes; their product is the number of devices. One
    size may be -1: whatever the others leave."""

    data: int = -1
    """Data-parallel axis (batch split, parameters replicated); -1: the rest."""
    fsdp: int = 1
    """Fully sharded data-parallel axis (batch split, large parameters and optimiser
    state split too)."""
    model: int = 1
    """Tensor-parallel axis (attention heads and MLP hidden units split)."""
    min_fsdp_size: int = 2**14
    """Parameters with fewer elements stay replicated on the fsdp axis."""
    devices: int = 0
    """Use the first this many devices (0: all devices of all processes)."""
    backend: str = ""
    """Devices of this JAX backend ("cpu", "gpu", …; empty: JAX's default), e.g. a
    mesh of CPU devices on a GPU machine."""

    def sizes(self, device_count: int) -> tuple[int, int, int]:
        """The three axis sizes for `device_count` devices (the -1 filled in)."""
        sizes = [self.data, self.fsdp, self.model]
        names = ", ".join(f"{n}={s}" for n, s in zip(AXES, sizes))
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(
                f"MeshConfig: axis sizes must be ≥ 1, with at most one -1 (the rest); got {names}."
            )
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if device_count % known:
                raise ValueError(
                    f"MeshConfig: {names} needs a multiple of {known} devices, but there are "
                    f"{device_count}; choose sizes whose product divides {device_count}."
                )
            sizes[sizes.index(-1)] = device_count // known
        elif known != device_count:
            raise ValueError(
                f"MeshConfig: {names} is a mesh of {known} devices, but there are "
                f"{device_count}; make the product {device_count} (or set one size to -1)."
            )
        return sizes[0], sizes[1], sizes[2]


def make_mesh(config: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """A `("data", "fsdp", "model")` mesh over `devices` (default: the first
    `config.devices`, or all devices of all processes, of `config.backend`), axes of
    type Auto (shardings propagate through `jax.jit`)."""
    if devices is None:
        devices = jax.devices(config.backend or None)
        if config.devices:
            if config.devices > len(devices):
                where = f" on backend {config.backend!r}" if config.backend else ""
                raise ValueError(
                    f"MeshConfig: devices={config.devices}, but only {len(devices)} are "
                    f"available{where}."
                )
            devices = devices[: config.devices]
    devices = list(devices)
    shape = config.sizes(len(devices))
    auto = (jax.sharding.AxisType.Auto,) * 3
    return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over `data × fsdp`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """The batch must split evenly over the batch axes."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % ways:
        raise ValueError(
            f"{name} ({batch_size}) must be divisible by data × fsdp = "
            f"{mesh.shape['data']} × {mesh.shape['fsdp']} = {ways}; change the batch size "
            "or the mesh."
        )


def leaf_spec(
    shape: tuple[int, ...], mesh: Mesh, min_fsdp_size: int, model_dim: int | None = None
) -> PartitionSpec:
    """The partition spec of one parameter (or optimiser-state) array of `shape`, whose
    role puts dimension `model_dim` (if any) on the `model` axis."""
    spec: list = [None] * len(shape)
    model = mesh.shape["model"]
    if (
        model > 1
        and model_dim is not None
        and model_dim < len(shape)
        and shape[model_dim] % model == 0
    ):
        spec[model_dim] = "model"
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1 and math.prod(shape) >= min_fsdp_size:
        free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % fsdp == 0]
        if free:
            spec[max(free, key=lambda d: (shape[d], -d))] = "fsdp"
    return PartitionSpec(*spec)


def tree_shardings(
    tree: PyTree,
    mesh: Mesh,
    min_fsdp_size: int = 2**14,
    model_dims: dict[str, int | None] | None = None,
) -> PyTree:
    """A `NamedSharding` for every array leaf of `tree`, `None` for other leaves.

    `model_dims` maps parameter paths (`jax.tree_util.keystr`, e.g. `".blocks[0].mlp_in.weight"`)
    to the dimension their role puts on the `model` axis; a leaf of `tree` whose path
    ends with such a path (a parameter, or its Adam moment inside an optimiser state)
    follows that rule. Other leaves get the `fsdp` rule alone."""
    model_dims = model_dims or {}

    def one(path, leaf):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            return None
        model_dim = None
        for start in range(len(path)):  # the longest path suffix that names a parameter
            key = jax.tree_util.keystr(tuple(path[start:]))
            if key in model_dims:
                model_dim = model_dims[key]
                break
        return NamedSharding(mesh, leaf_spec(tuple(leaf.shape), mesh, min_fsdp_size, model_dim))

    return jax.tree_util.tree_map_with_path(one, tree)
