"""The optax optimizer: schedule with warmup, global-norm clipping, AdamW/Adafactor/SGD, and
skipping of non-finite updates."""

import jax
import optax

from runtime.errors import UserError
from train.flags import TrainConfig

SCHEDULES = ("constant", "cosine", "linear", "rsqrt", "wsd")
OPTIMIZERS = ("adamw", "adafactor", "sgd")


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then the named decay down to min_lr_ratio * peak."""
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"unknown --schedule={cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    peak, warmup = cfg.learning_rate, max(cfg.warmup_steps, 0)
    final = peak * cfg.min_lr_ratio
    rest = max(cfg.steps - warmup, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(peak, final, rest)
    elif cfg.schedule == "rsqrt":
        after = lambda step: peak * jax.lax.rsqrt(1.0 + step / max(warmup, 1))
    else:  # warmup-stable-decay: flat at the peak, then a linear cool-down at the end
        decay = max(int(cfg.steps * cfg.decay_fraction), 1)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, final, decay)],
            [max(rest - decay, 0)])
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _decay_mask(params):
    """Weight decay on matrices and embeddings only; norms and biases are left alone."""
    def decays(path, _):
        # The last dict key names the param (a logical-name box adds an attribute key after it).
        name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
        return "kernel" in name or name in ("embedding", "lm_head")
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown --optimizer={cfg.optimizer!r}; choose one of "
                        f"{', '.join(OPTIMIZERS)}")
    schedule = make_schedule(cfg)
    if cfg.optimizer == "adamw":
        inner = optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2, eps=1e-8,
                            weight_decay=cfg.weight_decay, mask=_decay_mask)
    elif cfg.optimizer == "adafactor":
        inner = optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                                weight_decay_mask=_decay_mask)
    else:
        inner = optax.sgd(schedule, momentum=cfg.beta1 or None)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    # The loop stops the run after --max_nonfinite consecutive skips, so optax never needs to
    # give up and apply a NaN update itself.
    tx = optax.apply_if_finite(optax.chain(*parts, inner), max_consecutive_errors=2**30)
    return tx, schedule
