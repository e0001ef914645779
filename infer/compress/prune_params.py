"""Structured pruning of a flat params tree: score every attention head and MLP channel, keep the
highest-scoring ones in each layer, and slice the arrays into a smaller dense model of the same
family. `prune_checkpoint.py` does it to a model directory (evaluation, fine-tuning).

Params are flat {"layers/mlp/wi/kernel": array}; a scanned stack has a leading `layers` axis, an
unrolled one a module per layer (`layers/layer_0/...`). Both are handled as [layers, ...] below.
"""

import dataclasses

import numpy as np

from model.config import ModelConfig
from runtime.errors import UserError

Flat = dict[str, np.ndarray]
SCORES = ("magnitude",)

# Unstacked shapes, and the axis of heads (attention) or channels (MLP) in each.
_QUERY = {"query_kernel": (3, 1), "query_bias": (2, 0), "out_kernel": (3, 0)}
_KV = {"key_kernel": (3, 1), "value_kernel": (3, 1), "key_bias": (2, 0), "value_bias": (2, 0)}
_MLP = {"wi/kernel": (2, 1), "wg/kernel": (2, 1), "wi/bias": (1, 0), "wg/bias": (1, 0),
        "wo/kernel": (2, 0)}


@dataclasses.dataclass(frozen=True)
class Targets:
    """What each layer keeps. One count for every layer: ModelConfig has one num_heads and one
    mlp_dim, so the pruned model stays a dense model of the same kind."""

    heads: int
    kv_heads: int  # equal to heads under MHA (a head takes its key/value with it), else unchanged
    mlp: int
    notes: tuple[str, ...]  # where the fractions asked for could not be met exactly


@dataclasses.dataclass
class Pruned:
    config: ModelConfig
    params: Flat
    # Attention module ("layers/attention", "decoder/layers/cross_attention", ...) or MLP module
    # ("layers/mlp") -> int[layers, kept]: the original indices each layer kept, ascending.
    heads: dict[str, np.ndarray]
    channels: dict[str, np.ndarray]


def _removed(fraction: float, total: int) -> int:
    """Units to remove: the fraction rounded half up, always leaving at least one."""
    return min(int(fraction * total + 0.5), total - 1)


def targets(cfg: ModelConfig, heads: float, mlp: float) -> Targets:
    """Counts kept for `heads` / `mlp`, the fractions of query heads / MLP channels to remove.

    Under GQA every kv head serves a group of query heads (query head n uses kv head n // group),
    so the same number is removed from each group and num_heads stays a multiple of num_kv_heads.
    """
    for name, value in (("heads", heads), ("mlp", mlp)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"--{name}={value} must be a fraction in [0, 1) of what to remove")
    total, kv = cfg.num_heads, cfg.num_kv_heads
    group = total // kv
    if group == 1:
        kept_heads = kept_kv = total - _removed(heads, total)
    else:
        kept_heads, kept_kv = kv * (group - _removed(heads, group)), kv
    kept_mlp = cfg.mlp_dim - _removed(mlp, cfg.mlp_dim)
    notes = []
    removed = total - kept_heads
    if abs(removed / total - heads) > 1e-9:
        why = (f"{kv} kv heads share {group} query heads each, so {removed // kv} of each group "
               f"go: " if group > 1 else "")
        notes.append(f"--heads={heads}: {why}{removed} of {total} heads removed "
                     f"({removed / total:.3g})")
    removed = cfg.mlp_dim - kept_mlp
    if abs(removed / cfg.mlp_dim - mlp) > 1e-9:
        notes.append(f"--mlp={mlp}: {removed} of {cfg.mlp_dim} channels removed "
                     f"({removed / cfg.mlp_dim:.3g})")
    return Targets(kept_heads, kept_kv, kept_mlp, tuple(notes))


def _stacked(array: np.ndarray, ndim: int) -> np.ndarray:
    """[layers, *shape] of a param whose unstacked shape has `ndim` dims (layers 1 unrolled)."""
    return array.reshape(-1, *array.shape[array.ndim - ndim:])


def _norms(array: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """float64[layers, units]: the L2 norm of each unit's slice (index `axis` of the unstacked
    shape fixed, every other dim but the layer summed over)."""
    stacked = _stacked(array, ndim).astype(np.float64)
    units = np.moveaxis(stacked, axis + 1, 1)
    return np.sqrt(np.square(units).reshape(*units.shape[:2], -1).sum(-1))


def head_scores(params: Flat, module: str) -> np.ndarray:
    """float64[layers, heads], "magnitude": ||query_kernel[:, h, :]|| * ||out_kernel[h, :, :]||.

    A product, because a head's output scales with both sides and a head whose out_kernel slice
    is zero contributes nothing whatever its query. Keys and values are left out: under GQA a
    group's query heads share them, so they cannot tell those heads apart."""
    return (_norms(params[f"{module}/query_kernel"], 3, 1)
            * _norms(params[f"{module}/out_kernel"], 3, 0))


def channel_scores(params: Flat, module: str) -> np.ndarray:
    """float64[layers, mlp], "magnitude": ||wi[:, c]|| (* ||wg[:, c]|| when gated) *
    ||wo[c, :]||, the product for the same reason as `head_scores`."""
    score = _norms(params[f"{module}/wi/kernel"], 2, 1) * _norms(params[f"{module}/wo/kernel"], 2, 0)
    if f"{module}/wg/kernel" in params:
        score = score * _norms(params[f"{module}/wg/kernel"], 2, 1)
    return score


def _top(scores: np.ndarray, keep: int) -> np.ndarray:
    """int[..., keep]: indices of the `keep` largest along the last axis, ascending (ties keep
    the lower index)."""
    return np.sort(np.argsort(-scores, axis=-1, kind="stable")[..., :keep], axis=-1)


def top_heads(scores: np.ndarray, kv_heads: int, keep: int) -> np.ndarray:
    """int[layers, keep] of scores [layers, heads]. With groups (GQA, MQA), the best keep /
    kv_heads of each group, in group order, so kept head n' still reads kv head n' // new group."""
    layers, heads = scores.shape
    group = heads // kv_heads
    if group == 1:
        return _top(scores, keep)
    best = _top(scores.reshape(layers, kv_heads, group), keep // kv_heads)
    return (best + group * np.arange(kv_heads)[:, None]).reshape(layers, keep)


def _take(params: Flat, path: str, index: np.ndarray, shapes: tuple[int, int]) -> None:
    """Slices params[path] in place to the units `index` (int[layers, kept]) along the unit axis
    of its unstacked shape, keeping its stacking."""
    if path not in params:
        return
    ndim, axis = shapes
    array = params[path]
    stacked = _stacked(array, ndim)
    taken = np.stack([np.take(layer, kept, axis=axis) for layer, kept in zip(stacked, index,
                                                                              strict=True)])
    params[path] = taken.reshape(*array.shape[:array.ndim - ndim], *taken.shape[1:])


def _modules(params: Flat, suffix: str) -> list[str]:
    """Module paths owning a param that ends in `suffix` (e.g. every attention's query_kernel)."""
    return sorted(path[:-len(suffix) - 1] for path in params if path.endswith(f"/{suffix}"))


def _shared_heads(params: Flat, cfg: ModelConfig, attention: list[str]) -> dict[str, str]:
    """Self-attention module -> its stack's relative bias table, for T5-style models.

    The table ([buckets, heads]) is one per stack, added to every layer's logits, so all the
    self-attention layers of a stack must keep the same heads for its columns to follow them."""
    if cfg.positions != "relative":
        return {}
    tables = {path.removesuffix("relpos_bias/embedding"): path for path in params
              if path.endswith("relpos_bias/embedding")}
    return {module: tables[stack] for module in attention for stack in tables
            if module.startswith(stack) and module.rsplit("/", 1)[-1] == "attention"}


def prune(cfg: ModelConfig, params: Flat, heads: float, mlp: float,
          score: str = "magnitude") -> tuple[Pruned, Targets]:
    """Removes the `heads` fraction of query heads and the `mlp` fraction of MLP channels with
    the lowest scores, per layer (per stack where a relative bias ties a stack's layers).

    Cross-attention loses as many heads as self-attention (one num_heads for both). Returns the
    smaller model (head_dim stated, since d_model // num_heads would now differ) and targets."""
    if score not in SCORES:
        raise UserError(f"--score={score!r} is not one of {', '.join(SCORES)}")
    goal = targets(cfg, heads, mlp)
    out, kept, channels = dict(params), {}, {}
    attention = _modules(params, "query_kernel")
    tables = _shared_heads(params, cfg, attention)
    for module in attention:
        scores = head_scores(params, module)
        if module in tables:  # one choice for the stack, from the scores of all its layers
            stack = [m for m in attention if tables.get(m) == tables[module]]
            total = sum(head_scores(params, m).sum(0) for m in stack)
            scores = np.broadcast_to(total, scores.shape)
        kept[module] = top_heads(scores, cfg.num_kv_heads, goal.heads)
        for name, shapes in _QUERY.items():
            _take(out, f"{module}/{name}", kept[module], shapes)
        if goal.kv_heads != cfg.num_kv_heads:  # MHA: head h's key and value go with it
            for name, shapes in _KV.items():
                _take(out, f"{module}/{name}", kept[module], shapes)
    for table, module in {table: module for module, table in tables.items()}.items():
        _take(out, table, kept[module][:1], (2, 1))  # [buckets, heads]: one "layer"
    for module in _modules(params, "wi/kernel"):
        channels[module] = _top(channel_scores(params, module), goal.mlp)
        for name, shapes in _MLP.items():
            _take(out, f"{module}/{name}", channels[module], shapes)
    config = cfg.replace(num_heads=goal.heads, num_kv_heads=goal.kv_heads,
                         head_dim=cfg.resolved_head_dim, mlp_dim=goal.mlp)
    return Pruned(config, out, kept, channels), goal


def count(params: Flat) -> int:
    return sum(int(np.size(array)) for array in params.values())
