"""Forward + backward time of one attention layer's kernel: meshlm's `attention=xla` kernel
(model/blockwise.py) against `jax.nn.dot_product_attention(implementation="xla")`, the kernel it
replaced, and torch's `scaled_dot_product_attention` as the peer. Same q, k, v and output
cotangent for all three; outputs and gradients are checked equal before any ratio is reported.
Rounds alternate the order of the sides. Merged into benchmarks/results/<date>-<device>.json.

  python -m benchmarks.attention_kernel --batch_size=16 --seq_len=256 --num_heads=4
"""

import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks.record import results_path, save_run
from model import blockwise
from model.attention import attention_mask
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("batch_size", 16, "Sequences.")
    flags.DEFINE_integer("seq_len", 256, "Query and key length (causal self-attention).")
    flags.DEFINE_integer("num_heads", 4, "Query heads.")
    flags.DEFINE_integer("num_kv_heads", 0, "Key/value heads (0: as many as --num_heads).")
    flags.DEFINE_integer("head_dim", 32, "Features per head.")
    flags.DEFINE_integer("rounds", 9, "Timed rounds; each times every side once.")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def jax_side(fn: Callable, q, k, v, d_out) -> tuple[Callable[[], float], list[np.ndarray]]:
    """(time one fwd+bwd, [out, dq, dk, dv]) of attention `fn(q, k, v)`."""
    def fwd_bwd(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(d_out))
    compiled = jax.jit(fwd_bwd)
    results = [np.asarray(x) for x in compiled(q, k, v)]

    def timed() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        return time.perf_counter() - t0
    return timed, results


def torch_side(q, k, v, d_out) -> tuple[Callable[[], float], list[np.ndarray]] | str:
    """SDPA, causal, all cores; or why it was skipped."""
    try:
        import torch
    except ImportError as e:
        return f"torch not importable ({e})"
    torch.set_num_threads(os.cpu_count() or 1)
    group = q.shape[2] // k.shape[2]
    # torch wants [batch, heads, length, head_dim] and equal head counts (no GQA on CPU).
    tq, tk, tv = (torch.from_numpy(np.asarray(x)).transpose(1, 2).contiguous()
                  for x in (q, jnp.repeat(k, group, 2), jnp.repeat(v, group, 2)))
    td = torch.from_numpy(np.asarray(d_out)).transpose(1, 2).contiguous()

    def run():
        xs = [x.detach().requires_grad_() for x in (tq, tk, tv)]
        out = torch.nn.functional.scaled_dot_product_attention(*xs, is_causal=True)
        out.backward(td)
        return out, *[x.grad for x in xs]

    out, dq, dk, dv = run()
    # Gradients of repeated kv heads sum back onto their group.
    def fold(g):
        g = g.transpose(1, 2).numpy()
        return g.reshape(*g.shape[:2], -1, group, g.shape[-1]).sum(3)
    results = [out.detach().transpose(1, 2).numpy(), dq.transpose(1, 2).numpy(), fold(dk),
               fold(dv)]

    def timed() -> float:
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0
    return timed, results


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest |a - b| over out, dq, dk, dv, relative to each array's largest magnitude."""
    return max(float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)) for x, y in zip(a, b))


def main(argv: list[str]) -> None:
    del argv
    b, t, heads, hd = FLAGS.batch_size, FLAGS.seq_len, FLAGS.num_heads, FLAGS.head_dim
    kv_heads = FLAGS.num_kv_heads or heads
    if min(b, t, heads, hd, FLAGS.rounds) < 1 or heads % kv_heads:
        raise UserError("need positive sizes and --rounds, and --num_heads divisible by "
                        f"--num_kv_heads; got {b}, {t}, {heads}/{kv_heads}, {hd}, {FLAGS.rounds}")
    out_path = results_path(FLAGS.out)
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, t, heads, hd)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, t, kv_heads, hd)), jnp.float32) for _ in "kv")
    d_out = jnp.asarray(rng.standard_normal((b, t, heads, hd)), jnp.float32)
    mask = attention_mask(jnp.ones((b, t), jnp.int32), jnp.ones((b, t), jnp.int32), causal=True)
    scale = hd ** -0.5
    sides = {
        "ours": jax_side(lambda q, k, v: blockwise.attention(q, k, v, mask, None, scale, True),
                         q, k, v, d_out),
        "jax_dot_product_attention": jax_side(
            lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                                         implementation="xla"), q, k, v, d_out)}
    peer = torch_side(q, k, v, d_out)
    skipped = peer if isinstance(peer, str) else None
    if not skipped:
        sides["torch_sdpa"] = peer
    reference = sides["jax_dot_product_attention"][1]
    difference = {name: max_difference(res, reference) for name, (_, res) in sides.items()}
    if bad := {n: d for n, d in difference.items() if d > 1e-4}:
        raise UserError(f"outputs differ from jax.nn.dot_product_attention's by {bad} (relative); "
                        "no timing is reported for kernels that disagree")
    names = list(sides)
    times = {name: [] for name in names}
    for name in names:  # warm-up
        sides[name][0]()
    for r in range(FLAGS.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(sides[name][0]())
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    run = {"config": {"batch_size": b, "seq_len": t, "num_heads": heads, "num_kv_heads": kv_heads,
                      "head_dim": hd, "rounds": FLAGS.rounds, "dtype": "float32", "causal": True},
           "fwd_bwd_s": {name: {"median": medians[name], "min": min(ts), "max": max(ts),
                                "rounds": [round(x, 6) for x in ts]}
                         for name, ts in times.items()},
           "max_relative_difference": difference,
           "ratio_to_ours": {name: medians[name] / medians["ours"] for name in names},
           "peer_skipped": skipped}
    for name in names:
        s = run["fwd_bwd_s"][name]
        print(f"{name:<26} {1e3 * s['median']:8.2f} ms ({1e3 * s['min']:.2f}-{1e3 * s['max']:.2f})"
              f"  {run['ratio_to_ours'][name]:5.2f}x ours' time")
    save_run("attention_kernel", run, out_path)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.attention_kernel")
