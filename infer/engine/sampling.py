"""Next-token choice from logits: greedy, temperature, top-k and top-p (nucleus), all on device."""

import dataclasses

import jax
import jax.numpy as jnp

from runtime.errors import UserError


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k cut
    top_p: float = 1.0  # 1 means no nucleus cut

    def validated(self) -> "Sampling":
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")
        return self


def sample(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """logits: float32[batch, vocab] -> int32[batch]."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filtered(logits, sampling), axis=-1).astype(jnp.int32)


def filtered(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """The logits `sample` draws from at temperature > 0: divided by the temperature, -inf
    outside the top-k and the top-p nucleus (their softmax is the sampling distribution)."""
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        cutoff_index = jnp.sum(cumulative < sampling.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits
