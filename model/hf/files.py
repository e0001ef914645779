"""Reading and writing a Hugging Face model directory: `config.json` and safetensors, one file or
sharded with `model.safetensors.index.json`. Pickle checkpoints (`pytorch_model.bin`) are refused,
never opened: unpickling a file runs whatever code it carries."""

import contextlib
import json
import os
from collections.abc import Iterable

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from runtime.errors import UserError
from runtime.files import write_json

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
# HF's other names for a SentencePiece model (T5's spiece.model): ours is tokenizer.model. The
# tokenizer files copied both ways are model/store.py's TOKENIZER_FILES.
SENTENCEPIECE_ALIASES = ("spiece.model", "sentencepiece.bpe.model")
# safetensors header dtypes -> ModelConfig.param_dtype.
_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise UserError(f"--from_hf={hf_dir} is not a directory; point it at a Hugging Face "
                        f"model directory (config.json + *.safetensors)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{hf_dir} has no config.json; a Hugging Face model directory has "
                        f"config.json beside its *.safetensors") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object")
    return config


class Reader(contextlib.AbstractContextManager):
    """Tensors of a model directory by name, read one at a time (memory-mapped by safetensors),
    as numpy arrays in their stored dtype (bfloat16 via ml_dtypes)."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        index = os.path.join(hf_dir, INDEX)
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{index} is unreadable ({e})") from None
        elif os.path.isfile(os.path.join(hf_dir, SINGLE)):
            weight_map = None
        else:
            pickles = [p for p in PICKLES if os.path.exists(os.path.join(hf_dir, p))]
            if pickles:
                raise UserError(f"{hf_dir} holds only {pickles[0]}, a pickle checkpoint, which "
                                f"meshlm never loads (unpickling runs code); re-save it with "
                                f"transformers' save_pretrained(..., safe_serialization=True)")
            raise UserError(f"{hf_dir} has no {SINGLE} or {INDEX}")
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE]
        self._handles = {}
        for name in files:
            path = os.path.join(hf_dir, name)
            try:
                self._handles[name] = safe_open(path, framework="numpy")
            except (OSError, SafetensorError) as e:
                raise UserError(f"{path} is not a readable safetensors file ({e})") from None
        if weight_map is None:
            weight_map = {key: SINGLE for key in self._handles[SINGLE].keys()}  # noqa: SIM118
        self._where = weight_map

    def names(self) -> set[str]:
        return set(self._where)

    def dtype(self, name: str, prefix: str = "") -> str | None:
        """The stored dtype of `name` (or of `name` without `prefix`) as our config spells it,
        from the file header alone; None if absent or not a float type we keep."""
        for candidate in (name, name.removeprefix(prefix)):
            if candidate in self._where:
                stored = self._handles[self._where[candidate]].get_slice(candidate).get_dtype()
                return _DTYPES.get(stored)
        return None

    def get(self, name: str) -> np.ndarray | None:
        if name not in self._where:
            return None
        try:
            return self._handles[self._where[name]].get_tensor(name)
        except (OSError, SafetensorError) as e:
            raise UserError(f"{self.hf_dir}: tensor {name} is unreadable ({e})") from None

    def __exit__(self, *exc):
        self._handles.clear()  # safe_open handles unmap when released


def write_safetensors(out_dir: str, tensors: Iterable[tuple[str, np.ndarray]],
                      max_shard_bytes: int) -> list[str]:
    """Writes the (name, tensor) stream as `model.safetensors`, or as shards of at most
    `max_shard_bytes` plus an index when it is larger (HF's names and index format); holds one
    shard in memory at a time. Returns the files written."""
    shard: dict[str, np.ndarray] = {}
    keys: list[list[str]] = []  # the tensor names of each shard written
    size = total = 0

    def flush():
        save_file(shard, os.path.join(out_dir, f"shard-{len(keys):05d}.tmp"),
                  metadata={"format": "pt"})
        keys.append(list(shard))
        shard.clear()

    for name, tensor in tensors:
        if shard and size + tensor.nbytes > max_shard_bytes:
            flush()
            size = 0
        shard[name] = tensor
        size += tensor.nbytes
        total += tensor.nbytes
    flush()
    # Shards are named once their count is known: these renames name whole files inside the
    # staging directory (model/store.py renames it in whole), they are not there for atomicity.
    if len(keys) == 1:
        os.replace(os.path.join(out_dir, "shard-00000.tmp"), os.path.join(out_dir, SINGLE))
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(keys):05d}.safetensors" for i in range(len(keys))]
    for i, name in enumerate(names):
        os.replace(os.path.join(out_dir, f"shard-{i:05d}.tmp"), os.path.join(out_dir, name))
    weight_map = {key: name for name, shard_keys in zip(names, keys, strict=True)
                  for key in shard_keys}
    write_json(os.path.join(out_dir, INDEX),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*names, INDEX]
