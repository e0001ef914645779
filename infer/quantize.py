"""`python -m infer.quantize --checkpoint=PATH --out=DIR [--quant=int8]`: post-training int8
quantization of a model's weights, saved as a model directory (config.json + checkpoints/0 +
tokenizer) that every infer command loads as it is, a quarter of the float32 size.

No calibration data: each output channel's scale is its largest absolute weight / 127
(model/quant.py). The KV cache is not part of a checkpoint; --quant=int8_kv is chosen at run time.
"""

import os

from absl import flags
from flax import traverse_util

from model import quant, store
from model.flags import define_model_flags
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_model_flags("checkpoint", "quant", checkpoint={
        "help": "Training workdir or model directory to quantize."}, quant={
        "default": "int8", "choices": ("int8",),
        "help": "What to quantize: int8 weights (per-channel)."})
    flags.DEFINE_string("out", None, "Directory to create for the quantized model.")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")


def quantize_dir(checkpoint: str, out: str, mode: str = "int8", overwrite: bool = False) -> dict:
    """Quantizes `checkpoint` into `out` (written beside it, renamed into place when whole).
    Returns {"params_bytes_before", "params_bytes_after"}."""
    # jax and the model load only for a valid request
    from infer.engine.load import load, quantized, read_config, with_quant

    store.check_out(out, overwrite)
    if read_config(checkpoint).int8_weights:
        raise UserError(f"--checkpoint={checkpoint} holds int8 weights already")
    loaded = load(checkpoint)
    before = quant.param_bytes(loaded.params)
    loaded = quantized(loaded, with_quant(loaded.config, mode, checkpoint))
    flat = traverse_util.flatten_dict(loaded.params["params"], sep="/")
    with store.staged(out) as tmp:
        store.write_model_dir(tmp, loaded.config, flat, {**loaded.token_ids, "quantized_from":
                                                         os.path.abspath(checkpoint)})
        store.copy_tokenizer(checkpoint, tmp)
    return {"params_bytes_before": before, "params_bytes_after": quant.param_bytes(loaded.params)}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; see python -m infer.quantize --help")
    for name in ("checkpoint", "out"):
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")
    summary = quantize_dir(FLAGS.checkpoint, FLAGS.out, FLAGS.quant, FLAGS.overwrite)
    print(f"quantized {FLAGS.checkpoint} ({summary['params_bytes_before'] / 2**20:.2f} MiB of "
          f"params) into {FLAGS.out} ({summary['params_bytes_after'] / 2**20:.2f} MiB, "
          f"{FLAGS.quant})")


if __name__ == "__main__":
    run_command(main, define_flags, "infer.quantize")
