"""`python -m infer.bench --checkpoint=PATH | --preset=NAME`: serving speed of the KV-cache engine
per batch size: TTFT, TPOT and inter-token p50/p99, tokens/s, MBU, prefill MFU and peak memory
(measured by infer/timing/latency.py)."""

import os
import shlex
import sys

import jax
from absl import flags

from infer.engine.load import quantized, with_quant
from infer.timing.latency import bench_batch, parse_batch_sizes, table
from infer.timing.roofline import device_peaks
from infer.timing.timed_model import RANDOM_PRESET, resolve
from model import sharding
from model.config import get_preset
from model.flags import define_model_flags, size_overrides
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import write_json
from runtime.provenance import device_info, versions

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    define_model_flags("checkpoint", "preset", "sizes", "dtype", "quant", "mesh",
                       preset=RANDOM_PRESET)
    flags.DEFINE_string("batch_sizes", "1,16", "Comma-separated batch sizes (rows) to measure.")
    flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per row (random ids).")
    flags.DEFINE_integer("new_tokens", 256, "Tokens generated per row (no EOS stop).")
    flags.DEFINE_integer("repeats", 3, "Timed repeats of prefill and end-to-end (median).")
    flags.DEFINE_integer("seed", 0, "Seed of the random weights and prompt tokens.")
    flags.DEFINE_string("json", None, "Also write {device, versions, command, config, results}.")


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    with_quant(get_preset("tiny"), FLAGS.quant)  # a bad --quant is refused before any work
    for name in ("prompt_len", "new_tokens", "repeats"):
        if FLAGS[name].value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {FLAGS[name].value}")
    batch_sizes = parse_batch_sizes(FLAGS.batch_sizes)
    if FLAGS.json and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.json))):
        raise UserError(f"--json={FLAGS.json}: its directory does not exist")
    loaded, source = resolve(FLAGS.checkpoint, FLAGS.preset, size_overrides(), FLAGS.dtype,
                             FLAGS.prompt_len + FLAGS.new_tokens, FLAGS.mesh, FLAGS.seed)
    loaded = quantized(loaded, with_quant(loaded.config, FLAGS.quant, FLAGS.checkpoint or ""))
    for batch in batch_sizes:
        if batch % sharding.batch_shards(loaded.mesh):
            raise UserError(f"batch size {batch} must be divisible by the data-parallel size "
                            f"{sharding.batch_shards(loaded.mesh)}; set --mesh (e.g. tensor=N)")
    results = [bench_batch(loaded, b, FLAGS.prompt_len, FLAGS.new_tokens, FLAGS.repeats,
                           FLAGS.seed) for b in batch_sizes]
    device = jax.devices()[0]
    peaks = device_peaks(loaded.config.dtype)
    cfg = loaded.config
    name = device_info().get("cpu_model", device.device_kind)
    title = (f"device {name} ({device.platform} x{jax.device_count()}), {source}, "
             f"{cfg.num_params() / 1e6:.2f}M params, {cfg.dtype}, prompt {FLAGS.prompt_len} + "
             f"{FLAGS.new_tokens} new, mesh {dict(loaded.mesh.shape)}; MBU vs {peaks.bandwidth / 1e9:.0f} GB/s "
             f"({peaks.bandwidth_source}), MFU vs {peaks.flops / 1e12:.2f} TFLOP/s "
             f"({peaks.flops_source})")
    print(table(results, title))
    if FLAGS.json:
        record = {"device": {**device_info(), "bandwidth_bytes_per_s": peaks.bandwidth,
                             "bandwidth_source": peaks.bandwidth_source,
                             "peak_flops": peaks.flops, "peak_flops_source": peaks.flops_source},
                  "versions": versions(),
                  "command": shlex.join(["python", "-m", "infer.bench", *sys.argv[1:]]),
                  "config": {"source": source, "prompt_len": FLAGS.prompt_len,
                             "new_tokens": FLAGS.new_tokens, "repeats": FLAGS.repeats,
                             "quant": FLAGS.quant, "mesh": dict(loaded.mesh.shape),
                             "model": cfg.to_dict()},
                  "results": results}
        write_json(FLAGS.json, record)
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    run_command(main, define_flags, "infer.bench")
