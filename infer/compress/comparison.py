"""The ways to make a decoder answer faster (int8 weights, int8 KV cache, pruning, distillation,
speculative decoding) measured side by side with the model as saved: held-out quality, size and
serving speed, one row each. `python -m infer.compare` runs it; compare_report.py writes the table."""

import dataclasses
import os
import statistics
import time

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from infer.compress.prune_checkpoint import Request as PruneRequest
from infer.compress.prune_checkpoint import prune_checkpoint, source_flags
from infer.engine.engine import init_cache
from infer.engine.load import Loaded, load, quantized, read_config, with_quant
from infer.engine.sampling import Sampling
from infer.engine.speculative import check_pair, speculative_generate
from infer.timing.latency import bench_batch
from model import sharding, store
from model.config import ModelConfig
from model.family import family_of
from model.quant import param_bytes
from runtime.errors import UserError

VARIANTS = ("baseline", "int8", "int8+KV", "pruned", "distilled", "speculative")
# What a non-decoder checkpoint could not be given, for its refusal.
_NOT_APPLICABLE = {
    "encoder": "it generates no tokens, so TTFT, TPOT, tokens/s, the int8 KV cache and "
               "speculative decoding do not apply",
    "encoder_decoder": "speculative decoding (decoder-only) and a distilled student (distill "
                       "refuses encoder-decoder teachers) do not apply",
}


@dataclasses.dataclass(frozen=True)
class Request:
    """What to compare and how (the flags of `python -m infer.compare`)."""

    checkpoint: str
    out: str
    pruned: str | None = None
    student: str | None = None
    prune_heads: float = 0.5
    prune_mlp: float = 0.5
    finetune_steps: int = 50
    distill_steps: int = 200
    batch_sizes: tuple[int, ...] = (1, 16)
    prompt_len: int = 64
    new_tokens: int = 64
    repeats: int = 3
    draft_tokens: int = 4
    eval_batches: int = 0
    mesh: str = ""
    seed: int = 0

    @property
    def pruned_dir(self) -> str:
        return os.path.join(os.path.abspath(self.out), "pruned")

    @property
    def student_dir(self) -> str:
        return os.path.join(os.path.abspath(self.out), "student")


def _decoder(path: str, role: str, context: int, base: ModelConfig | None = None) -> ModelConfig:
    """The config at `path`, refused unless a decoder that fits `context` (and, for a pruned
    model, reads `base`'s tokens, so that all rows are scored on the same held-out split)."""
    cfg = read_config(path)
    if family_of(cfg).generates != "causal":
        raise UserError(f"infer.compare compares decoder-only models, and {role}={path} is "
                        f"{cfg.family}: {_NOT_APPLICABLE[cfg.family]}")
    if base is not None and cfg.vocab_size != base.vocab_size:
        raise UserError(f"{role}={path} has {cfg.vocab_size} tokens, --checkpoint "
                        f"{base.vocab_size}; compare models that share one tokenizer")
    if context > cfg.max_len:
        raise UserError(f"--prompt_len + --new_tokens = {context} exceeds the context of "
                        f"{role}={path} ({cfg.max_len}); shorten one of them")
    return cfg


def _unused(path: str, flag: str) -> None:
    """A model compare would make must not silently resume or clobber an earlier one."""
    if os.path.exists(path):
        raise UserError(f"{path} exists (from an earlier compare?); pass --{flag}={path}"
                        f"{'/finetune' if flag == 'pruned' else ''} to reuse it, or choose a "
                        f"new --out")


def check(request: Request) -> tuple[ModelConfig, dict]:
    """Every refusal that needs no data or params; (the checkpoint's config, its config.json)."""
    for name in ("prompt_len", "new_tokens", "repeats", "distill_steps", "draft_tokens"):
        if getattr(request, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(request, name)}")
    if request.finetune_steps < 0 or request.eval_batches < 0:
        raise UserError("--finetune_steps and --eval_batches must not be negative")
    if 1 not in request.batch_sizes:
        raise UserError(f"--batch_sizes={','.join(map(str, request.batch_sizes))} must include "
                        f"1: speculative decoding and the plot are at batch 1")
    if os.path.exists(request.out) and not os.path.isdir(request.out):
        raise UserError(f"--out={request.out} is a file; name a directory")
    context = request.prompt_len + request.new_tokens
    cfg = _decoder(request.checkpoint, "--checkpoint", context)
    _, recorded = store.read_recorded(request.checkpoint, "checkpoint")
    if not isinstance(recorded.get("flags"), dict):
        raise UserError(f"--checkpoint={request.checkpoint} records no training flags (a "
                        f"converted model?); compare needs a training workdir, whose held-out "
                        f"split scores every row")
    if cfg.quant != "none":
        raise UserError(f"--checkpoint={request.checkpoint} is quantized ({cfg.quant}); compare "
                        f"the float model it was quantized from")
    if request.pruned:
        _decoder(request.pruned, "--pruned", context, cfg)
    else:
        for name in ("prune_heads", "prune_mlp"):
            if not 0.0 <= getattr(request, name) < 1.0:
                raise UserError(f"--{name}={getattr(request, name)} must be a fraction in [0, 1)")
        if request.prune_heads == 0.0 and request.prune_mlp == 0.0:
            raise UserError("--prune_heads and --prune_mlp are both 0: nothing to prune")
        _unused(request.pruned_dir, "pruned")
    if request.student:
        check_pair(cfg, _decoder(request.student, "--student", context))
    else:
        _unused(request.student_dir, "student")
    shards = sharding.batch_shards(sharding.make_mesh(request.mesh))
    for batch in request.batch_sizes:
        if batch % shards:
            raise UserError(f"batch size {batch} must be divisible by the data-parallel size "
                            f"{shards}; set --mesh (e.g. tensor=N)")
    return cfg, recorded


def eval_run(request: Request, recorded: dict):
    """The checkpoint's run resolved as `infer.prune` does (data, tokenizer, eval split) on
    compare's mesh, writing nothing: every row is scored on its held-out batches."""
    from train.prepare import prepare

    checkpoint = os.path.abspath(request.checkpoint)
    cfg = source_flags(request.checkpoint, recorded, checkpoint,
                        os.path.join(os.path.abspath(request.out), "eval"))
    # A decoder's held-out quality is its clm loss, whatever objective trained it (a distilled
    # checkpoint's own teacher is not needed to score it).
    return prepare(cfg.replace(objective="clm", teacher="", mesh=request.mesh, dcn_mesh="",
                               eval_batches=request.eval_batches or cfg.eval_batches))


class _ThroughCache:
    """The decoder run as a prefill: each eval row's keys and values are written to a fresh KV
    cache and attention reads them back from it, so an int8 cache's rounding shows in the loss
    (a plain forward pass never touches the cache)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def apply(self, variables, tokens, positions, segments):
        cache = init_cache(self.model.config, *tokens.shape)
        logits, _ = self.model.apply(variables, tokens, positions, segments, cache, 0, segments)
        return logits


def quality(run, loaded: Loaded, through_cache: bool = False) -> dict[str, float]:
    """The training loop's own held-out evaluator (train/evaluate.py) on `loaded` as it runs
    (int8 params through the int8 matmul)."""
    from train.evaluate import HeldOut

    model = _ThroughCache(loaded.model) if through_cache else loaded.model
    params = loaded.params["params"]
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
        return HeldOut(run, model, jax.tree.map(lambda x: x.sharding, params))(params)


def param_count(params: dict) -> int:
    """Weights, without int8 kernels' scales: an int8 model has the float model's weights."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return sum(int(np.size(x)) for path, x in flat.items()
               if not (path.endswith("_scale") and path[:-len("_scale")] in flat))


def _speeds(loaded: Loaded, request: Request) -> list[dict]:
    out = []
    for batch in request.batch_sizes:
        r = bench_batch(loaded, batch, request.prompt_len, request.new_tokens, request.repeats,
                        request.seed)
        # End to end (prefill included) is the one rate the speculative row, timed per whole
        # request, shares with the others; the decode-only rate stays in "bench".
        out.append({"batch_size": batch, "ttft_s": r["ttft_s"], "tpot_s": r["tpot_s"],
                    "tokens_per_s": r["overall_tokens_per_s"],
                    "decode_tokens_per_s": r["tokens_per_s"], "bench": r})
    return out


def _row(name: str, path: str, loaded: Loaded, evals: dict, speeds: list[dict],
         note: str) -> dict:
    return {"variant": name, "model": path, "quant": loaded.config.quant,
            "eval_loss": evals["eval_loss"], "eval_ppl": evals["eval_ppl"], "quality": evals,
            "params": param_count(loaded.params), "param_bytes": param_bytes(loaded.params),
            "speed": speeds, "acceptance_rate": None, "tokens_per_target_pass": None,
            "note": note}


def _text_prompt(run, length: int) -> list[int]:
    """The first `length` held-out tokens: how often a draft is accepted depends on the text,
    so speculative decoding is timed on real text, not on the random ids that time the rest."""
    batch = next(iter(run.eval_data))
    tokens = np.asarray(batch["tokens"])[np.asarray(batch["segment_ids"]) != 0]
    return np.resize(tokens, length).astype(int).tolist()  # repeats a split shorter than that


def _speculative(target: Loaded, draft: Loaded, prompt: list[int], request: Request) -> dict:
    def once():
        return speculative_generate(target, draft, prompt, request.new_tokens,
                                    draft_tokens=request.draft_tokens, sampling=Sampling(),
                                    seed=request.seed)

    once()  # compiles both prefills and the decode loop
    times = []
    for _ in range(request.repeats):
        t0 = time.perf_counter()
        _, stats = once()  # returns host values: the work is done
        times.append(time.perf_counter() - t0)
    wall = statistics.median(times)
    return {**stats, "wall_s": wall, "tokens_per_s": stats["new_tokens"] / wall}


def _student_flags(request: Request, teacher: ModelConfig, recorded: dict):
    """The checkpoint's own run, distilled into half its layers (its width kept)."""
    cfg = source_flags(request.checkpoint, recorded, "", request.student_dir)
    steps = request.distill_steps
    return cfg.replace(objective="distill", teacher=os.path.abspath(request.checkpoint),
                       num_layers=max(1, teacher.num_layers // 2), d_model=teacher.d_model,
                       num_heads=teacher.num_heads, num_kv_heads=teacher.num_kv_heads,
                       mlp_dim=teacher.mlp_dim, vocab_size=teacher.vocab_size, steps=steps,
                       warmup_steps=steps // 10, eval_every=0, save_every=steps,
                       log_every=min(cfg.log_every, steps), keep_checkpoints=1, keep_period=0)


def _progress(i: int, row: dict, started: float) -> None:
    speed = row["speed"][0]["tokens_per_s"]  # batch 1 comes first (sorted)
    print(f"[{i}/{len(VARIANTS)}] {row['variant']}: eval loss {row['eval_loss']:.4f}, "
          f"{row['params']:,} params, {speed:,.1f} tok/s at batch 1 "
          f"({time.perf_counter() - started:.1f} s)", flush=True)


def compare(request: Request) -> dict:
    """Measures every row (making the pruned model and the student first where not given);
    returns the record compare.json holds, less device and command."""
    from train.loop import train

    cfg, recorded = check(request)
    run = eval_run(request, recorded)  # data missing etc. is refused before anything is made
    pruned_path, student_path = request.pruned, request.student
    if not pruned_path:
        print(f"pruning into {request.pruned_dir}", flush=True)
        prune_checkpoint(PruneRequest(request.checkpoint, request.pruned_dir,
                                      request.prune_heads, request.prune_mlp,
                                      finetune_steps=request.finetune_steps, eval=False,
                                      eval_batches=request.eval_batches))
        pruned_path = os.path.join(request.pruned_dir, "finetune" if request.finetune_steps
                                   else "")
    if not student_path:
        print(f"distilling a student into {request.student_dir}", flush=True)
        train(_student_flags(request, cfg, recorded))
        student_path = request.student_dir
    pruned_path, student_path = os.path.abspath(pruned_path), os.path.abspath(student_path)

    rows, started = [], time.perf_counter()

    def add(name, path, loaded, evals, note):
        rows.append(_row(name, path, loaded, evals, _speeds(loaded, request), note))
        _progress(len(rows), rows[-1], started)

    checkpoint = os.path.abspath(request.checkpoint)
    baseline = load(checkpoint, request.mesh)
    base_evals = quality(run, baseline)
    add("baseline", checkpoint, baseline, base_evals,
        f"as saved ({cfg.param_dtype} params, {cfg.dtype} compute)")
    int8 = quantized(baseline, with_quant(cfg, "int8"))
    add("int8", checkpoint, int8, quality(run, int8),
        "int8 weights (per output channel), quantized after loading")
    int8 = quantized(int8, with_quant(cfg, "int8+int8_kv"))
    add("int8+KV", checkpoint, int8, quality(run, int8, through_cache=True),
        "int8 weights and KV cache; eval loss read through the int8 cache")
    del int8
    pruned = load(pruned_path, request.mesh)
    add("pruned", pruned_path, pruned, quality(run, pruned),
        f"--pruned={pruned_path}" if request.pruned else
        f"{request.prune_heads:.0%} of heads, {request.prune_mlp:.0%} of MLP channels removed, "
        f"{request.finetune_steps} fine-tune steps")
    del pruned
    student = load(student_path, request.mesh)
    add("distilled", student_path, student, quality(run, student),
        f"--student={student_path}" if request.student else
        f"{student.config.num_layers} of {cfg.num_layers} layers, {request.distill_steps} "
        f"distill steps")

    stats = _speculative(baseline, student, _text_prompt(run, request.prompt_len), request)
    both = {"target": baseline.params, "draft": student.params}
    rows.append({
        "variant": "speculative", "model": f"{checkpoint} + draft {student_path}",
        "quant": "none", "eval_loss": base_evals["eval_loss"],
        "eval_ppl": base_evals["eval_ppl"], "quality": base_evals,
        "params": param_count(both), "param_bytes": param_bytes(both),
        "speed": [{"batch_size": b, "ttft_s": None, "tpot_s": None,
                   "tokens_per_s": stats["tokens_per_s"] if b == 1 else None} for b in
                  request.batch_sizes],
        "acceptance_rate": stats["acceptance_rate"],
        "tokens_per_target_pass": stats["tokens_per_target_pass"], "speculative": stats,
        "note": f"target baseline, draft distilled, k={request.draft_tokens}; quality is the "
                f"baseline's (output distributed as the target's); params: both models"})
    _progress(len(rows), rows[-1], started)
    return {"config": {
        "checkpoint": checkpoint, "pruned": pruned_path, "student": student_path,
        "made_here": {"pruned": not request.pruned, "student": not request.student},
        "prune_heads": request.prune_heads, "prune_mlp": request.prune_mlp,
        "finetune_steps": request.finetune_steps, "distill_steps": request.distill_steps,
        "batch_sizes": list(request.batch_sizes), "prompt_len": request.prompt_len,
        "new_tokens": request.new_tokens, "repeats": request.repeats,
        "draft_tokens": request.draft_tokens, "seed": request.seed,
        "mesh": dict(baseline.mesh.shape), "eval_batches": run.cfg.eval_batches,
        "eval_data": run.cfg.data, "speculative_prompt": "the first prompt_len held-out tokens",
        "model": cfg.to_dict()}, "rows": rows}
