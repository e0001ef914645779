"""The one table mapping logical axis names to mesh axes, and the mesh built from `--mesh`.

Model code names logical axes only (`batch`, `embed`, `mlp`, ...); this file alone says where they
live on the `data` / `fsdp` / `tensor` mesh. Change the table to change the parallelism.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from model.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or axes, or None = replicated). Flax uses each mesh axis at most once
# per array, left to right, so an activation (`batch`, `length`, `embed`) shards its batch over
# data+fsdp and leaves `embed` whole, while a param's `embed` dimension is split over fsdp (ZeRO-3).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("kv_length", None),  # keys of an attention bias; encoder positions seen by cross-attention
    ("relpos_buckets", None),  # T5 relative bias table [buckets, heads]: heads split, buckets not
    ("token_types", None),  # BERT's 2-row token-type table
    ("pooler", "tensor"),  # output features of BERT's pooler (a square embed -> embed dense)
    ("mlm", "tensor"),  # output features of BERT's MLM-head transform (also embed -> embed)
    ("labels", None),  # classifier outputs: a handful, never worth splitting
)


def parse_mesh(spec: str, num_devices: int) -> dict[str, int]:
    """`data=2,fsdp=-1,tensor=2` -> {'data': 2, 'fsdp': 2, 'tensor': 2} for 8 devices.

    Axes left out have size 1; one `-1` takes the remaining devices; an empty spec puts every
    device on `data`.
    """
    sizes = {axis: 1 for axis in MESH_AXES}
    if not spec.strip():
        sizes["data"] = num_devices
        return sizes
    fill = None
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in MESH_AXES:
            raise UserError(f"--mesh={spec!r}: write it as comma-separated axis=size with axes "
                            f"{', '.join(MESH_AXES)} (e.g. data=2,fsdp=-1,tensor=2)")
        try:
            size = int(value)
        except ValueError:
            raise UserError(f"--mesh={spec!r}: size of {name!r} must be an integer") from None
        if size == -1:
            if fill is not None:
                raise UserError(f"--mesh={spec!r}: only one axis may be -1")
            fill = name
        elif size <= 0:
            raise UserError(f"--mesh={spec!r}: axis sizes must be positive or -1")
        else:
            sizes[name] = size
    fixed = math.prod(s for a, s in sizes.items() if a != fill)
    if fill is not None:
        if num_devices % fixed:
            raise UserError(f"--mesh={spec!r}: {num_devices} devices cannot be split with the "
                            f"other axes' product {fixed}")
        sizes[fill] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise UserError(f"--mesh={spec!r} uses {math.prod(sizes.values())} devices but "
                        f"{num_devices} are available; make the sizes multiply to {num_devices}")
    return sizes


def make_mesh(spec: str = "", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); Auto axis types so logical constraints work."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    # Auto axes: a bare make_mesh gives Explicit axes, which turn Linen's logical constraints into
    # assertions. make_mesh places the tensor axis on the closest devices.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def unbox(tree):
    """Drops the logical-name boxes, keeping the arrays (their placement is set by jit)."""
    return jax.tree.map(lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split (the product of the axes `batch` maps to)."""
    axes = dict(RULES)["batch"]
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def mesh_spec(logical: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Logical spec -> mesh spec by the table; a dimension the mesh axes don't divide evenly
    (2 kv heads on 4-way tensor, GPT-2's 50257 vocab) stays whole, i.e. is replicated."""
    spec = list(nn.logical_to_mesh_axes(logical, RULES))
    spec += [None] * (len(shape) - len(spec))
    for i, axes in enumerate(spec):
        names = (axes,) if isinstance(axes, str) else axes or ()
        if shape[i] % math.prod(mesh.shape[a] for a in names):
            spec[i] = None
    return PartitionSpec(*spec)


def state_shardings(abstract_boxed, mesh: Mesh):
    """Shardings for a tree of abstract arrays, some boxed with logical names
    (`nn.LogicallyPartitioned` from `jax.eval_shape(init)`); unboxed leaves are replicated."""
    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, mesh_spec(PartitionSpec(*leaf.names), leaf.value.shape, mesh))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, abstract_boxed,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def named(mesh: Mesh, *logical_axes: str | None) -> NamedSharding:
    """NamedSharding for an array whose dimensions have these logical names (e.g. a batch)."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(PartitionSpec(*logical_axes), RULES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
