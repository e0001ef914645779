"""A model's params as abstract arrays: the shape, dtype and sharding (by the one rules table) of
every param on a mesh, made with `jax.eval_shape`, so nothing is allocated. A restore fills them in;
a jit lays its params out by them."""

import flax.linen as nn
import jax
from flax import traverse_util
from jax.sharding import Mesh

from model import sharding
from model.config import ModelConfig
from model.family import build_model, init_inputs


def abstract_params(config: ModelConfig, mesh: Mesh):
    """The params of a `config` model as shape/dtype/sharding structs on `mesh`."""
    model = build_model(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(model.init, jax.random.key(0), *init_inputs(config))
    shardings = sharding.state_shardings(boxed["params"], mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        sharding.unbox(boxed["params"]), shardings)


def shardings_of(abstract):
    """The tree of shardings of an abstract (or placed) tree, e.g. for `jax.jit`'s in_shardings."""
    return jax.tree.map(lambda x: x.sharding, abstract)


def one_device_mesh() -> Mesh:
    """A mesh of the first device only: where a command that reads a whole model at once (convert,
    prune) holds it, with no copy per device of a larger mesh."""
    return sharding.make_mesh("", jax.devices()[:1])


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{"layers/mlp/wi/kernel": shape, ...} of the model `config` describes."""
    flat = traverse_util.flatten_dict(abstract_params(config, one_device_mesh()), sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}
