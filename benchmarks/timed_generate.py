"""The two sides a generation benchmark races, each as `generate(n) -> seconds` of greedy
prefill + n tokens on the same prompt ids: meshlm's engine, and HF transformers'
LlamaForCausalLM of the same shape holding our weights (torch on the CPU); and the paired timing
of both. Each side's `generate.last` holds the ids its latest call generated, so a benchmark can
check the two agree before it reports a ratio (docs/benchmarks.md)."""

import os
import statistics
import time

import flax.linen as nn
import jax
import numpy as np

from benchmarks.hf_weights import load_into
from infer.engine.engine import generate_padded
from infer.engine.sampling import Sampling
from model import sharding
from model.config import ModelConfig


def llama_mismatch(cfg: ModelConfig) -> str:
    """Why HF Llama cannot have this config's shape ('' when it can)."""
    wanted = {"norm": "rmsnorm", "activation": "swiglu", "positions": "rope", "use_bias": False,
              "tie_embeddings": False}
    return ", ".join(f"{k}={getattr(cfg, k)}" for k, v in wanted.items() if getattr(cfg, k) != v)


def hf_generate(cfg: ModelConfig, tokens: np.ndarray, int8: bool = False, seed: int = 0,
                params=None):
    """(generate(n) -> seconds of LlamaForCausalLM.generate, greedy, static cache, fp32, all
    cores; a description) or (None, why it was skipped). `params`: ours, loaded into the HF
    model (else it keeps its own random init from `seed`); `int8`: torch's dynamic int8
    quantization of every Linear (int8 weights, activations quantized per call)."""
    if why := llama_mismatch(cfg):
        return None, f"HF Llama peer needs a Llama-shaped config; this one has {why}"
    try:
        import torch
        import transformers
    except ImportError as e:
        return None, f"torch/transformers not importable ({e})"
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.resolved_head_dim,
        max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=0, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(hf_cfg).eval()
    if params is not None:
        load_into(model, cfg, params)
    if int8:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    inputs = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.ones_like(inputs)

    def generate(n: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False,
                                 cache_implementation="static")
        elapsed = time.perf_counter() - t0
        if out.shape[1] != tokens.shape[1] + n:  # a timing of fewer tokens is no timing
            raise RuntimeError(f"HF generate stopped after {out.shape[1] - tokens.shape[1]} of "
                               f"{n} tokens")
        generate.last = out[:, tokens.shape[1]:].numpy()
        return elapsed

    return generate, (f"transformers LlamaForCausalLM.generate (static cache, "
                      f"{hf_cfg._attn_implementation} attention), greedy, torch "
                      f"{'dynamic int8 Linear' if int8 else 'fp32'} on cpu, "
                      f"{torch.get_num_threads()} threads")


def ours_generate(loaded, tokens: np.ndarray):
    """generate(n) -> seconds of the engine's compiled prefill + on-device decode loop."""
    segments = np.ones_like(tokens)

    def generate(n: int) -> float:
        t0 = time.perf_counter()
        with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
            out, _ = generate_padded(loaded.model, loaded.params, tokens, segments,
                                     jax.random.key(0), max_new_tokens=n, sampling=Sampling(),
                                     eos_id=-1)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - t0
        generate.last = np.asarray(out)
        return elapsed

    return generate


def agreement(ours: np.ndarray, hf: np.ndarray) -> dict:
    """How far two sides' greedy ids [batch, n] agree: equal, and the shortest common prefix.
    Two fp32 implementations of one model can part at a near-tie of the top two logits and
    then follow different continuations, so a divergence late in a long run is reported, not
    hidden."""
    same = ours == hf
    prefix = [int(np.argmin(row)) if not row.all() else row.size for row in same]
    return {"equal": bool(same.all()), "common_prefix_min": min(prefix), "tokens": ours.shape[1]}


def paired(ours, hf, batch: int, new_tokens: int, repeats: int) -> dict:
    """Each round times both sides back to back, ours first in even rounds and HF first in odd
    ones, so load that comes and goes on a shared machine hits both alike. Each side's figures
    come from its median times; a ratio is the ratio of those figures (docs/benchmarks.md), and
    the per-round ratios are kept as its spread."""
    for fn in (ours, hf):  # warm-up: compiles ours, allocates HF's static cache
        fn(1), fn(new_tokens)
    rounds = []
    for r in range(repeats):
        if r % 2 == 0:
            o1, h1, on, hn = ours(1), hf(1), ours(new_tokens), hf(new_tokens)
        else:
            h1, o1, hn, on = hf(1), ours(1), hf(new_tokens), ours(new_tokens)
        rounds.append((o1, h1, on, hn))
    sides = {}
    for name, (ttft, total) in (("ours", (0, 2)), ("hf", (1, 3))):
        t1 = statistics.median(p[ttft] for p in rounds)
        tn = statistics.median(p[total] for p in rounds)
        sides[name] = {"ttft_s": t1, "end_to_end_s": tn,
                       "tokens_per_s": batch * (new_tokens - 1) / max(tn - t1, 1e-9),
                       "overall_tokens_per_s": batch * new_tokens / tn}
    sides["ratio"] = {
        kind: sides["ours"][kind] / sides["hf"][kind]
        for kind in ("tokens_per_s", "overall_tokens_per_s")}
    sides["ratio"]["decode_tokens_per_s"] = sides["ratio"].pop("tokens_per_s")
    sides["ratio"]["decode_per_pair"] = [(p[3] - p[1]) / max(p[2] - p[0], 1e-9) for p in rounds]
    sides["ratio"]["overall_per_pair"] = [p[3] / p[2] for p in rounds]
    return sides
