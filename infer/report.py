"""`python -m infer.report --checkpoint=PATH|--preset=NAME --out=DIR`: the timing characteristics
of inference. Where each token's time goes (embedding, attention, MLP, norms, output projection,
sampling, host overhead) in prefill and decode, how that moves with context length and batch, and
where each part sits on the device's roofline. Writes report.json, report.md and PNG plots.

Times are measured (isolated compiled sub-programs, see infer/timing/components.py); FLOPs and bytes come
from our formulas and from XLA's cost analysis side by side, and the roofline time they imply is
shown next to the measured one.
"""

import dataclasses
import json
import os
import shlex
import sys

import flax.linen as nn
import jax
from absl import flags
from tqdm import tqdm

from infer.bench import SIZE_FLAGS, parse_batch_sizes, resolve
from infer.engine.load import quantized, with_quant
from infer.engine.sampling import Sampling
from infer.timing.components import COMPONENTS, Shape, measure
from infer.timing.report_text import markdown
from infer.timing.roofline import Peaks, Work, component_work, device_peaks
from model import sharding
from model.config import get_preset
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import atomic_write
from runtime.provenance import device_info, versions

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    flags.DEFINE_string("checkpoint", None, "Training workdir or converted model directory.")
    flags.DEFINE_string("preset", None, "Model preset with random (seeded) weights instead of a "
                                        "checkpoint; the size flags override it.")
    for name in SIZE_FLAGS:
        flags.DEFINE_integer(name, None, f"Override the preset's {name} (--preset only).")
    flags.DEFINE_string("out", None, "Directory for report.json, report.md and the plots.")
    flags.DEFINE_string("contexts", "128,256,512,1024,2048,4096",
                        "Context lengths (KV-cache slots; prompt length in prefill) of the "
                        "context sweep, run at --batch.")
    flags.DEFINE_string("batch_sizes", "1,2,4,8,16,32,64",
                        "Batch sizes of the batch sweep, run at --context.")
    flags.DEFINE_list("phases", ["decode", "prefill"], "Phases to measure: decode, prefill.")
    flags.DEFINE_integer("batch", 1, "Batch size of the context sweep.")
    flags.DEFINE_integer("context", 512, "Context length of the batch sweep.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the "
                      "model's own).")
    flags.DEFINE_float("temperature", 0.0, "Sampling measured: temperature (0 is greedy).")
    flags.DEFINE_integer("top_k", 0, "Sampling measured: top-k cut (0 disables).")
    flags.DEFINE_float("top_p", 1.0, "Sampling measured: nucleus mass (1 disables).")
    flags.DEFINE_string("mesh", "", "Device mesh, e.g. tensor=2 (default: all devices on data).")
    flags.DEFINE_string("quant", "none", "int8 (weights), int8_kv (KV cache), int8+int8_kv, or "
                                         "none (as saved); see docs/inference.md.")
    flags.DEFINE_integer("repeats", 5, "Timed runs per sub-program (the minimum is kept).")
    flags.DEFINE_float("target_ms", 30.0, "Wall time each timed loop aims for; longer is "
                                          "steadier on noisy machines.")
    flags.DEFINE_integer("seed", 0, "Seed of the random weights and inputs.")


def sweep(contexts: list[int], batch_sizes: list[int], batch: int, context: int,
          phases: tuple[str, ...] = ("decode", "prefill")) -> list[Shape]:
    shapes = []
    for phase in phases:
        for s in ([Shape(phase, batch, c) for c in contexts]
                  + [Shape(phase, b, context) for b in batch_sizes]):
            if s not in shapes:
                shapes.append(s)
    return shapes


def point(cfg, shape: Shape, measured: dict, peaks: Peaks) -> dict:
    """One sweep point: measured times next to the formula and XLA views of the same work."""
    work = component_work(cfg, shape.batch, shape.queries, shape.context)
    tokens = shape.batch * shape.queries
    components = {}
    for name in COMPONENTS:
        t, w, xla = measured["components"][name], work[name], measured["xla"][name]
        components[name] = {
            "time_s": t, "per_token_s": t / tokens,
            "formula": {"flops": w.flops, "bytes": w.bytes}, "xla": xla,
            "intensity": w.intensity, "bound": w.bound(peaks), "roofline_s": w.roofline_s(peaks),
            "achieved_flops_per_s": w.flops / t if t > 0 else None,
            "achieved_bytes_per_s": w.bytes / t if t > 0 else None,
        }
    total = sum(work.values(), Work(0.0, 0.0))
    device_s, host_s = measured["step_device_s"], measured["step_host_s"]
    return {
        "phase": shape.phase, "batch": shape.batch, "context": shape.context,
        "tokens_per_step": tokens, "step_device_s": device_s, "step_host_s": host_s,
        "host_overhead_s": max(host_s - device_s, 0.0),
        "unattributed_s": device_s - sum(c["time_s"] for c in components.values()),
        "tokens_per_s": tokens / device_s, "tokens_per_s_host_loop": tokens / host_s,
        "step_formula": {"flops": total.flops, "bytes": total.bytes,
                         "intensity": total.intensity, "bound": total.bound(peaks),
                         "roofline_s": total.roofline_s(peaks)},
        "mbu": total.bytes / device_s / peaks.bandwidth,
        "mfu": total.flops / device_s / peaks.flops,
        "components": components,
    }


def _check(contexts: list[int], max_len: int | None) -> None:
    for name in ("batch", "context", "repeats"):
        if FLAGS[name].value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {FLAGS[name].value}")
    if FLAGS.target_ms <= 0:
        raise UserError(f"--target_ms must be positive, got {FLAGS.target_ms}")
    if max_len is not None and max(contexts + [FLAGS.context]) > max_len:
        raise UserError(f"context {max(contexts + [FLAGS.context])} exceeds the checkpoint's "
                        f"context of {max_len}; lower --contexts/--context")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
    if not FLAGS.out:
        raise UserError("--out=DIR is required (report.json, report.md and plots go there)")
    if os.path.exists(FLAGS.out) and not os.path.isdir(FLAGS.out):
        raise UserError(f"--out={FLAGS.out} exists and is not a directory")
    phases = tuple(FLAGS.phases)
    if not phases or set(phases) - {"decode", "prefill"}:
        raise UserError(f"--phases={','.join(phases)} must name decode and/or prefill")
    contexts = parse_batch_sizes(FLAGS.contexts, "contexts")
    batch_sizes = parse_batch_sizes(FLAGS.batch_sizes)
    sampling = Sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p).validated()
    if bool(FLAGS.checkpoint) == bool(FLAGS.preset):
        raise UserError("give exactly one of --checkpoint=PATH or --preset=NAME")
    max_len = None
    if FLAGS.checkpoint:
        from infer.engine.load import read_config

        max_len = read_config(FLAGS.checkpoint).max_len
    _check(contexts, max_len)
    sizes = {n: FLAGS[n].value for n in SIZE_FLAGS if FLAGS[n].value is not None}
    longest = max(contexts + [FLAGS.context])
    # resolve() checks the checkpoint's context itself; presets grow their position table.
    with_quant(get_preset("tiny"), FLAGS.quant)  # a bad --quant is refused before any work
    loaded, source = resolve(FLAGS.checkpoint, FLAGS.preset, sizes, FLAGS.dtype, longest,
                             FLAGS.mesh, FLAGS.seed)
    loaded = quantized(loaded, with_quant(loaded.config, FLAGS.quant, FLAGS.checkpoint or ""))
    shards = sharding.batch_shards(loaded.mesh)
    if bad := [b for b in batch_sizes + [FLAGS.batch] if b % shards]:
        raise UserError(f"batch sizes {bad} are not divisible by the data-parallel size {shards}; "
                        "set --mesh (e.g. tensor=N)")
    cfg = loaded.config
    # The formulas count the whole model's work, so a mesh is measured against all its devices.
    n = loaded.mesh.size
    one = device_peaks(cfg.dtype)
    peaks = Peaks(one.flops * n, one.bandwidth * n, one.flops_source + (f" x {n}" if n > 1 else ""),
                  one.bandwidth_source + (f" x {n}" if n > 1 else ""))
    points = []
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        for shape in tqdm(sweep(contexts, batch_sizes, FLAGS.batch, FLAGS.context, phases),
                          desc="measuring", unit="point", file=sys.stderr):
            measured = measure(loaded.model, cfg, loaded.params, shape, sampling,
                               FLAGS.target_ms / 1e3, FLAGS.repeats, FLAGS.seed)
            # XLA's cost analysis is per device of the partitioned program.
            measured["xla"] = {k: {m: v * n for m, v in c.items()}
                               for k, c in measured["xla"].items()}
            points.append(point(cfg, shape, measured, peaks))
    device = jax.devices()[0]
    report = {
        "device": {**device_info(), "name": device_info().get("cpu_model", device.device_kind),
                   "peak_flops": peaks.flops, "peak_flops_source": peaks.flops_source,
                   "bandwidth": peaks.bandwidth, "bandwidth_source": peaks.bandwidth_source,
                   "ridge_flops_per_byte": peaks.ridge},
        "versions": versions(),
        "command": shlex.join(["python", "-m", "infer.report", *sys.argv[1:]]),
        "config": {"source": source, "model": cfg.to_dict(), "params": cfg.num_params(),
                   "sampling": dataclasses.asdict(sampling),
                   "contexts": contexts, "batch_sizes": batch_sizes, "batch": FLAGS.batch,
                   "context": FLAGS.context, "mesh": dict(loaded.mesh.shape),
                   "repeats": FLAGS.repeats, "target_ms": FLAGS.target_ms},
        "points": points,
    }
    os.makedirs(FLAGS.out, exist_ok=True)
    _write(os.path.join(FLAGS.out, "report.json"), json.dumps(report, indent=2) + "\n")
    from infer.timing.report_plots import plot_all

    plots = plot_all(report, FLAGS.out)
    _write(os.path.join(FLAGS.out, "report.md"), markdown(report, plots))
    print(f"wrote {FLAGS.out}/report.json, report.md, {', '.join(plots)}")


def _write(path: str, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


if __name__ == "__main__":
    run_command(main, define_flags, "infer.report")
