"""`python -m model.convert`: Hugging Face checkpoints in and out.

    python -m model.convert --from_hf=HF_DIR --out=PATH         # GPT-2, Llama, BERT, T5 -> ours
    python -m model.convert --to_hf=OUT_DIR --checkpoint=PATH   # a workdir or converted model

Import writes a directory of the workdir's shape (config.json, one orbax checkpoint, the
tokenizer files), which every `--checkpoint=PATH` and `--init_from=PATH` accepts. Export writes
config.json + safetensors that `transformers` loads with `from_pretrained`. Both stream tensor by
tensor (never two full copies of the model), read only safetensors, and write into a temporary
directory renamed into place at the end (model/store.py): a refused or failed conversion leaves
nothing behind, and --overwrite keeps the old model until the new one is in its place.
"""

import json
import os
import re

import jax
import numpy as np
from absl import flags

from model.abstract import param_shapes
from model.flags import define_model_flags
from model.hf import architectures, files
from model.hf.fields import token_ids
from model.hf.rules import export_tensors, import_params
from model.store import (
    check_out,
    copy_tokenizer,
    read_recorded,
    restore_flat,
    staged,
    write_model_dir,
)
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import write_json

FLAGS = flags.FLAGS


def import_hf(hf_dir: str, out: str, overwrite: bool = False) -> dict:
    """HF model directory -> our model directory at `out`. Returns a summary for printing."""
    hf = files.read_config(hf_dir)
    module, architecture = architectures.for_hf(hf, hf_dir)
    cfg = module.config_from_hf(hf, architecture, hf_dir)
    rules = module.rules(cfg, architecture)
    check_out(out, overwrite)
    with files.Reader(hf_dir) as reader:
        consumed: set[str] = set()

        def read(name: str):
            for candidate in (name, name.removeprefix(module.BASE_PREFIX)):
                tensor = reader.get(candidate)
                if tensor is not None:
                    consumed.add(candidate)
                    return tensor
            return None

        # Params keep the checkpoint's storage dtype (the token table's, read from its header).
        dtype = reader.dtype(rules[0].names()[0], module.BASE_PREFIX) or "float32"
        cfg = cfg.replace(param_dtype=dtype)
        with staged(out) as tmp:
            params = import_params(rules, param_shapes(cfg), np.dtype(jax.numpy.dtype(dtype)),
                                   read, hf_dir)
            ignored = sorted(n for n in reader.names() - consumed
                             if not any(re.fullmatch(p, n) for p in module.IGNORED))
            write_model_dir(tmp, cfg, params, {"architecture": architecture,
                                               "source": os.path.abspath(hf_dir),
                                               **_token_ids(hf_dir, hf, module)})
            tokenizer = copy_tokenizer(hf_dir, tmp, files.SENTENCEPIECE_ALIASES)
    return {"architecture": architecture, "params": sum(p.size for p in params.values()),
            "dtype": dtype, "tokenizer": tokenizer, "unused_tensors": ignored}


def _token_ids(hf_dir: str, hf: dict, module) -> dict[str, int]:
    """Special ids from config.json, overridden by generation_config.json (where transformers
    5 keeps decoder_start_token_id); a T5 without one starts from its pad id, as T5 does."""
    ids = token_ids(hf)
    path = os.path.join(hf_dir, "generation_config.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                ids.update(token_ids(json.load(f)))
        except (OSError, ValueError, AttributeError) as e:
            raise UserError(f"{path} is unreadable ({e})") from None
    if module.MODEL_TYPE == "t5":
        ids.setdefault("decoder_start_token_id", ids.get("pad_token_id", 0))
    return ids


def export_hf(checkpoint: str, out: str, architecture: str = "",
              max_shard_bytes: int = 5 << 30, overwrite: bool = False) -> dict:
    """Our workdir or converted model -> a HF model directory at `out`."""
    cfg, recorded = read_recorded(checkpoint, "checkpoint")
    if cfg.int8_weights:
        raise UserError(f"--checkpoint={checkpoint} holds int8 weights (infer.quantize); "
                        f"export the float model it was quantized from")
    hf_meta = recorded.get("hf", {})
    objective = recorded.get("train", {}).get("objective")
    module, architecture = architectures.for_ours(
        cfg, architecture or hf_meta.get("architecture", ""), objective)
    check_out(out, overwrite)  # refuse a bad --to_hf before the slow restore
    params = restore_flat(checkpoint, cfg)
    rules = module.rules(cfg, architecture)
    with staged(out) as tmp:  # a HF directory, staged and renamed in as our own are
        hf_config = {**module.config_to_hf(cfg, architecture), **token_ids(hf_meta),
                     "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype}
        write_json(os.path.join(tmp, "config.json"), hf_config)
        written = files.write_safetensors(tmp, export_tensors(rules, params), max_shard_bytes)
        tokenizer = copy_tokenizer(checkpoint, tmp)
    exported = {p for r in rules for p in r.ours}
    return {"architecture": architecture, "files": written, "tokenizer": tokenizer,
            "not_exported": sorted(set(params) - exported)}


def define_flags() -> None:
    flags.DEFINE_string("from_hf", None, "Hugging Face model directory to import (config.json + "
                                         "*.safetensors); needs --out.")
    flags.DEFINE_string("out", None, "Directory to create for the imported model.")
    flags.DEFINE_string("to_hf", None, "Hugging Face model directory to create; needs "
                                       "--checkpoint.")
    define_model_flags("checkpoint", checkpoint={
        "help": "Training workdir or converted model to export."})
    flags.DEFINE_string("architecture", "", f"HF class to export as, one of "
                        f"{', '.join(architectures.SUPPORTED)} (default: the one the model was "
                        f"imported from, else implied by its family and objective).")
    flags.DEFINE_integer("max_shard_mb", 5000, "Largest safetensors file written on export; "
                                               "bigger models are sharded with an index.")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty output directory.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; see python -m model.convert --help")
    if bool(FLAGS.from_hf) == bool(FLAGS.to_hf):
        raise UserError("pass exactly one of --from_hf=HF_DIR (with --out) or --to_hf=OUT_DIR "
                        "(with --checkpoint)")
    if FLAGS.from_hf:
        if not FLAGS.out:
            raise UserError("--from_hf needs --out=PATH, the directory to create")
        summary = import_hf(FLAGS.from_hf, FLAGS.out, FLAGS.overwrite)
        print(f"imported {summary['architecture']} ({summary['params']:,} params, "
              f"{summary['dtype']}) into {FLAGS.out}; tokenizer: "
              f"{', '.join(summary['tokenizer']) or 'none (token-id commands only)'}")
        if summary["unused_tensors"]:
            print(f"note: {len(summary['unused_tensors'])} tensors have no place in this "
                  f"architecture and were skipped: {', '.join(summary['unused_tensors'][:5])}")
        return
    if not FLAGS.checkpoint:
        raise UserError("--to_hf needs --checkpoint=PATH, the workdir or model to export")
    if FLAGS.max_shard_mb <= 0:
        raise UserError(f"--max_shard_mb must be positive, got {FLAGS.max_shard_mb}")
    summary = export_hf(FLAGS.checkpoint, FLAGS.to_hf, FLAGS.architecture,
                        FLAGS.max_shard_mb << 20, FLAGS.overwrite)
    print(f"exported {summary['architecture']} to {FLAGS.to_hf}: {', '.join(summary['files'])}")
    if summary["not_exported"]:
        print(f"note: {summary['architecture']} has no place for "
              f"{', '.join(summary['not_exported'])}; they were left out")


if __name__ == "__main__":
    run_command(main, define_flags, "model.convert")
