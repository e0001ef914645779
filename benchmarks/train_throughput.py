"""Training throughput of meshlm's real train step against HF transformers' GPT-2 (torch) of the
same shape: step time, tokens/s, MFU and memory, merged into benchmarks/results/<date>-<device>.json.

The peer starts from our initial params (benchmarks/hf_weights.py), and both sides' first-step
losses on the same batch must agree before a ratio is reported. Rounds alternate which side steps
first, so load that comes and goes on a shared machine hits both alike (docs/benchmarks.md).

The HF peer is GPT-2 only: a config that is not GPT-2-shaped (RMSNorm, SwiGLU, RoPE, GQA, untied or
bias-free, e.g. the llama presets) still runs on our side, and its record says why the peer was skipped.
"""

import math
import os
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np
from absl import flags

from benchmarks.hf_weights import load_into
from benchmarks.record import results_path, save_run
from model import sharding
from model.config import ModelConfig, get_preset
from model.family import build_model, family_of
from model.flags import define_model_flags, size_overrides
from runtime.command import run_command
from runtime.errors import UserError
from runtime.hardware import peak_flops
from train.flags import TrainConfig
from train.objectives import clm
from train.optimizer import make_optimizer
from train.state import abstract_state, create_state
from train.step import jit_train_step, make_train_step

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    define_model_flags("preset", "sizes", preset={"default": "gpt2_124m"})
    flags.DEFINE_integer("batch_size", 16, "Global batch size in sequences.")
    flags.DEFINE_integer("seq_len", 1024, "Tokens per sequence.")
    define_model_flags("dtype", "mesh", dtype={
        "default": "bfloat16", "help": "Compute dtype of our model (params and optimizer state "
                                       "stay float32); the peer uses bf16 autocast only on CUDA, "
                                       "fp32 otherwise."})
    flags.DEFINE_integer("steps", 10, "Timed rounds; each times one step of each side, in "
                         "alternating order. The median step time is reported.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps per side before the timed ones.")
    flags.DEFINE_integer("seed", 0, "Seed of the init and of the synthetic tokens.")
    flags.DEFINE_enum("peer", "hf", ["hf", "none"], "Peer to compare with: hf (transformers "
                      "GPT2LMHeadModel + torch AdamW; skipped with a note if not importable) or none.")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def model_config(preset: str, seq_len: int, dtype: str, **sizes: int | None) -> ModelConfig:
    base = get_preset(preset)
    if sizes.get("num_heads") and not sizes.get("num_kv_heads") and base.num_kv_heads == base.num_heads:
        sizes["num_kv_heads"] = sizes["num_heads"]  # --num_heads on an MHA preset keeps it MHA
    cfg = base.replace(dtype=dtype, **sizes)
    return cfg.replace(max_len=max(cfg.max_len, seq_len))  # as train/prepare.py does


def check_numbers(batch_size: int, seq_len: int, steps: int, warmup: int) -> None:
    if batch_size < 1 or seq_len < 2 or steps < 1 or warmup < 0:
        raise UserError(f"need --batch_size >= 1, --seq_len >= 2, --steps >= 1 and --warmup >= 0; "
                        f"got {batch_size}, {seq_len}, {steps}, {warmup}")


def _timed(step: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def paired_steps(sides: dict[str, Callable[[], object]], warmup: int, steps: int
                 ) -> dict[str, list[float]]:
    """Seconds of each timed step of each side; round r runs the sides in order when r is even
    and reversed when odd. Each `step` must block until its work is done."""
    for step in sides.values():
        for _ in range(warmup):
            step()
    names = list(sides)
    times = {name: [] for name in names}
    for r in range(steps):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(_timed(sides[name]))
    return times


def _summary(times: list[float], tokens: int, flops_per_token: float) -> dict:
    step_time = statistics.median(times)
    tokens_per_s = tokens / step_time
    return {"step_time_s": step_time, "step_times_s": [round(t, 5) for t in times],
            "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops_per_token / peak_flops()}


def build_ours(cfg: ModelConfig, train_cfg: TrainConfig, batch: dict[str, np.ndarray],
               mesh_spec: str) -> tuple[Callable[[], object], dict, dict]:
    """(step, facts, initial params) of the jitted, sharded, donated train step of train/loop.py
    on one fixed batch; facts["first_loss"] is the loss of the first step, taken now."""
    mesh = sharding.make_mesh(mesh_spec)
    batch_size = batch["tokens"].shape[0]
    if batch_size % sharding.batch_shards(mesh):
        raise UserError(f"--batch_size={batch_size} must be divisible by the data-parallel size "
                        f"{sharding.batch_shards(mesh)} of mesh {dict(mesh.shape)}")
    model = build_model(cfg)
    tx, schedule = make_optimizer(train_cfg)
    abstract, shardings = abstract_state(model, tx, train_cfg.seed, mesh)
    batch_sharding = sharding.named(mesh, "batch", None)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        step_fn = jit_train_step(make_train_step(model, clm, tx, schedule), shardings, mesh)
        shape = jax.ShapeDtypeStruct(batch["tokens"].shape, np.int32, sharding=batch_sharding)
        t0 = time.perf_counter()
        compiled = step_fn.lower(abstract, dict.fromkeys(batch, shape)).compile()
        compile_s = time.perf_counter() - t0
        state, _ = create_state(model, tx, train_cfg.seed, mesh)
        device_batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
        initial = jax.device_get(state["params"])  # the step donates (deletes) these
        holder = [state]  # the step donates the state, so each call must take the newest one

        def step() -> dict:
            with jax.set_mesh(mesh):
                holder[0], metrics = compiled(holder[0], device_batch)
                return jax.block_until_ready(metrics)

        first_loss = float(step()["loss"])
    memory = {}
    stats = compiled.memory_analysis()
    if stats is not None:
        memory = {"argument_bytes": stats.argument_size_in_bytes,
                  "temp_bytes": stats.temp_size_in_bytes,
                  "total_bytes": stats.argument_size_in_bytes + stats.temp_size_in_bytes}
    device_stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform == "gpu" else None
    if device_stats and "peak_bytes_in_use" in device_stats:
        memory["peak_bytes_in_use"] = device_stats["peak_bytes_in_use"]
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract["params"]))
    seq_len = batch["tokens"].shape[1] - 1
    facts = {"compile_s": compile_s, "params": params, "memory": memory,
             "mesh": dict(mesh.shape), "first_loss": first_loss,
             "tokens": batch_size * seq_len,
             "flops_per_token": family_of(cfg).train_flops_per_token(cfg, seq_len)}
    return step, facts, initial


def gpt2_mismatch(cfg: ModelConfig) -> str:
    """Why HF GPT-2 cannot have this config's shape ('' when it can)."""
    wanted = {"norm": "layernorm", "activation": "gelu", "positions": "learned", "use_bias": True,
              "tie_embeddings": True, "head_dim": 0}
    diffs = [f"{k}={getattr(cfg, k)}" for k, v in wanted.items() if getattr(cfg, k) != v]
    if cfg.num_kv_heads != cfg.num_heads:
        diffs.append(f"num_kv_heads={cfg.num_kv_heads} != num_heads={cfg.num_heads}")
    return ", ".join(diffs)


def build_hf_peer(cfg: ModelConfig, train_cfg: TrainConfig, tokens: np.ndarray, params
                  ) -> tuple[Callable[[], object] | None, dict]:
    """(step, facts) of GPT2LMHeadModel of the same shape holding our initial `params`, torch
    AdamW, clipping at 1.0; facts["first_loss"] is its first step's loss, taken now. Or
    (None, {'skipped': why})."""
    if why := gpt2_mismatch(cfg):
        return None, {"skipped": f"HF GPT-2 peer needs a GPT-2-shaped config; this one has {why}"}
    try:
        import torch
        import transformers
    except ImportError as e:
        return None, {"skipped": f"torch/transformers not importable ({e})"}
    torch.manual_seed(train_cfg.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    cuda = jax.devices()[0].platform == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    hf_cfg = transformers.GPT2Config(
        n_layer=cfg.num_layers, n_embd=cfg.d_model, n_head=cfg.num_heads, n_inner=cfg.mlp_dim,
        n_positions=cfg.max_len, vocab_size=cfg.vocab_size, activation_function="gelu_new",
        layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(hf_cfg)
    load_into(model, cfg, params)
    model = model.to(device).train()
    # Weight decay on matrices only, as train/optimizer.py does.
    weights = list(model.parameters())
    groups = [{"params": [p for p in weights if p.ndim >= 2], "weight_decay": train_cfg.weight_decay},
              {"params": [p for p in weights if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=train_cfg.learning_rate, eps=1e-8,
                            betas=(train_cfg.beta1, train_cfg.beta2))
    # Ours predicts tokens[1:] from tokens[:-1] (all seq_len targets); HF's `labels` would
    # shift inside and drop the last one, so the loss is taken here the same way as ours.
    inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64)).to(device)
    targets = torch.from_numpy(tokens[:, 1:].astype(np.int64)).to(device)
    bf16 = cuda and cfg.dtype == "bfloat16"

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                                     targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return loss.detach()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first_loss = float(step())
    facts = {"framework": f"transformers GPT2LMHeadModel ({hf_cfg._attn_implementation} "
                          f"attention), torch.optim.AdamW on {device.type}",
             "dtype": "bfloat16 autocast" if bf16 else "float32",
             "threads": torch.get_num_threads(), "params": sum(p.numel() for p in weights),
             "first_loss": first_loss}
    if cuda:  # a peak over the whole run, so it is read after the timed steps
        step.peak_memory = lambda: {"peak_bytes_in_use": torch.cuda.max_memory_allocated()}
    return step, facts


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int) -> dict:
    """int32[batch, seq_len + 1] rows of one document each (clm shifts by one inside the step)."""
    rows = (batch_size, seq_len + 1)
    tokens = np.random.default_rng(seed).integers(0, vocab_size, rows, dtype=np.int32)
    positions = np.broadcast_to(np.arange(seq_len + 1, dtype=np.int32), rows).copy()
    return {"tokens": tokens, "segment_ids": np.ones(rows, np.int32), "positions": positions}


def table(run: dict) -> str:
    def row(name: str, r: dict) -> str:
        if "skipped" in r:
            return f"{name:<6} skipped: {r['skipped']}"
        mem = r["memory"].get("peak_bytes_in_use", r["memory"].get("total_bytes"))
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        return (f"{name:<6} {compile_s:>9} {r['step_time_s']:>10.4f} {r['tokens_per_s']:>12,.0f} "
                f"{100 * r['mfu']:>7.2f}% {r['params'] / 1e6:>8.2f}M "
                + (f"{mem / 2**30:>8.3f}" if mem else f"{'-':>8}"))
    c = run["config"]
    title = (f"{c['preset']} {c['overrides']} batch {c['batch_size']} x seq {c['seq_len']}, "
             f"{c['dtype']}, mesh {run['ours']['mesh']}")
    header = (f"{'':<6} {'compile_s':>9} {'step_s':>10} {'tokens/s':>12} {'MFU':>8} "
              f"{'params':>9} {'mem GiB':>8}")
    lines = [title, header, row("ours", run["ours"]), row("peer", run["peer"])]
    if run["ratio"] is not None:
        lines.append(f"ratio ours/peer tokens/s: {run['ratio']:.2f}x")
    return "\n".join(lines)


def losses_agree(ours: float, peer: float, dtype: str) -> bool:
    """Same weights, batch and loss: fp32 sides agree to float rounding; bf16 compute is looser."""
    return abs(ours - peer) <= (2e-2 if dtype == "bfloat16" else 1e-4) * max(abs(peer), 1.0)


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    out = results_path(FLAGS.out)
    overrides = size_overrides()
    check_numbers(FLAGS.batch_size, FLAGS.seq_len, FLAGS.steps, FLAGS.warmup)
    cfg = model_config(FLAGS.preset, FLAGS.seq_len, FLAGS.dtype, **overrides)
    # AdamW with the default TrainConfig's hyperparameters; warmup is sized so the lr is nonzero.
    train_cfg = TrainConfig(steps=FLAGS.warmup + FLAGS.steps + 1, warmup_steps=1, seed=FLAGS.seed)
    batch = synthetic_batch(FLAGS.batch_size, FLAGS.seq_len, cfg.vocab_size, FLAGS.seed)
    ours_step, ours, initial = build_ours(cfg, train_cfg, batch, FLAGS.mesh)
    peer_step, peer = None, {"skipped": "--peer=none"}
    if FLAGS.peer == "hf":
        peer_step, peer = build_hf_peer(cfg, train_cfg, batch["tokens"], initial)
    sides = {"ours": ours_step}
    if peer_step is not None:
        if not losses_agree(ours["first_loss"], peer["first_loss"], cfg.dtype):
            raise UserError(f"first-step losses differ (ours {ours['first_loss']:.6f}, HF "
                            f"{peer['first_loss']:.6f}) from the same weights and batch; no "
                            "speed ratio is reported for sides that compute different things")
        sides["peer"] = peer_step
    times = paired_steps(sides, FLAGS.warmup, FLAGS.steps)
    tokens, flops = ours.pop("tokens"), ours.pop("flops_per_token")
    ours.update(_summary(times["ours"], tokens, flops))
    if "peer" in times:
        memory = getattr(peer_step, "peak_memory", dict)()
        peer.update(memory=memory, **_summary(times["peer"], tokens, flops))
    run = {"config": {"preset": FLAGS.preset, "overrides": overrides, "batch_size": FLAGS.batch_size,
                      "seq_len": FLAGS.seq_len, "dtype": FLAGS.dtype, "mesh": FLAGS.mesh,
                      "steps": FLAGS.steps, "warmup": FLAGS.warmup, "model": cfg.to_dict()},
           "ours": ours, "peer": peer, "timing": "paired rounds, alternating order",
           "ratio": ours["tokens_per_s"] / peer["tokens_per_s"] if "tokens_per_s" in peer else None}
    print(table(run))
    save_run("train_throughput", run, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.train_throughput")
