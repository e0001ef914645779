"""The one table mapping logical axis names to mesh axes, and the mesh built from `--mesh` (and
`--dcn_mesh`, which lays it out across hosts).

Model code names logical axes only (`batch`, `embed`, `mlp`, ...); this file alone says where they
live on the `data` / `fsdp` / `tensor` mesh. Change the table to change the parallelism.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from runtime.errors import UserError

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


def parse_mesh(spec: str, num_devices: int, flag: str = "--mesh",
               unit: str = "devices") -> dict[str, int]:
    """`data=2,fsdp=-1,tensor=2` -> {'data': 2, 'fsdp': 2, 'tensor': 2} for 8 devices.

    Axes left out have size 1; one `-1` takes the remaining devices; an empty spec puts every
    device on `data`. `flag` and `unit` name what is split in the error messages (`--dcn_mesh`
    splits hosts or slices, not devices).
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
            raise UserError(f"{flag}={spec!r}: write it as comma-separated axis=size with axes "
                            f"{', '.join(MESH_AXES)} (e.g. data=2,fsdp=-1,tensor=2)")
        try:
            size = int(value)
        except ValueError:
            raise UserError(f"{flag}={spec!r}: size of {name!r} must be an integer") from None
        if size == -1:
            if fill is not None:
                raise UserError(f"{flag}={spec!r}: only one axis may be -1")
            fill = name
        elif size <= 0:
            raise UserError(f"{flag}={spec!r}: axis sizes must be positive or -1")
        else:
            sizes[name] = size
    fixed = math.prod(s for a, s in sizes.items() if a != fill)
    if fill is not None:
        if num_devices % fixed:
            raise UserError(f"{flag}={spec!r}: {num_devices} {unit} cannot be split with the "
                            f"other axes' product {fixed}")
        sizes[fill] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise UserError(f"{flag}={spec!r} uses {math.prod(sizes.values())} {unit} but "
                        f"there are {num_devices}; make the sizes multiply to {num_devices}")
    return sizes


def make_mesh(spec: str = "", devices: Sequence[jax.Device] | None = None,
              dcn: str = "") -> Mesh:
    """A mesh with axes (data, fsdp, tensor); Auto axis types so logical constraints work.

    Without `dcn` (--dcn_mesh), `spec` (--mesh) splits all devices. With it, `spec` splits the
    devices of one host (one slice on TPU), `dcn` splits the hosts (slices), and each axis of the
    mesh is the product of the two: --mesh=fsdp=-1 --dcn_mesh=data=4 on 4 hosts of 8 GPUs is
    data=4 (across hosts, over the slow network) x fsdp=8 (inside each host).
    """
    devices = list(devices if devices is not None else jax.devices())
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if not dcn.strip():
        slices = len(_granules(devices)) if devices[0].platform == "tpu" else 1
        if slices > 1:  # jax.make_mesh refuses these: it cannot tell which axes may cross DCN
            raise UserError(f"the devices span {slices} TPU slices; pass --dcn_mesh (e.g. "
                            f"--dcn_mesh=data={slices}) to say which mesh axes cross slices")
        sizes = parse_mesh(spec, len(devices))
        shape = tuple(sizes[a] for a in MESH_AXES)
        # Auto axes: a bare make_mesh gives Explicit axes, which turn Linen's logical constraints
        # into assertions. make_mesh places the tensor axis on the closest devices.
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(hybrid_grid(spec, dcn, devices), MESH_AXES, axis_types=axis_types)


def _granule_key(device) -> int:
    """The unit the slow network joins: a TPU slice, else a host (process)."""
    return device.slice_index if device.platform == "tpu" else device.process_index


def _granules(devices: Sequence) -> dict[int, list]:
    granules: dict[int, list] = {}
    for device in devices:
        granules.setdefault(_granule_key(device), []).append(device)
    return granules


def hybrid_grid(spec: str, dcn: str, devices: Sequence) -> np.ndarray:
    """The devices of a --mesh x --dcn_mesh mesh as an array [data, fsdp, tensor]: each host's
    (slice's) devices form one block of --mesh's shape, and the blocks are laid out as --dcn_mesh
    says, so only the axes --dcn_mesh splits cross the slow network."""
    granules = _granules(devices)
    tpu = devices[0].platform == "tpu"
    host = "slice" if tpu else "host"
    counts = sorted({len(g) for g in granules.values()})
    if len(counts) > 1:
        raise UserError(f"--dcn_mesh needs the same number of devices on every {host}, but they "
                        f"have {' or '.join(map(str, counts))}")
    dcn_sizes = parse_mesh(dcn, len(granules), "--dcn_mesh", f"{host}s")
    # With --dcn_mesh, --mesh describes one host, so its -1 (or an empty --mesh) fills that host.
    ici_sizes = parse_mesh(spec, counts[0], "--mesh", f"devices per {host}")
    return mesh_utils.create_hybrid_device_mesh(
        [ici_sizes[a] for a in MESH_AXES], [dcn_sizes[a] for a in MESH_AXES], devices,
        process_is_granule=not tpu)


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
