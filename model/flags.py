"""The flags that choose a model, defined once for every command: --checkpoint, --preset, the size
flags, --mesh, --quant and --dtype. A command registers the ones it takes with `define_model_flags`
and says there where its default or help differs (a benchmark's preset, train's own help text)."""

import dataclasses
from collections.abc import Mapping
from typing import Any

from absl import flags

SIZE_FLAGS = ("num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim", "vocab_size")
DTYPES = ("float32", "bfloat16")

_SIZE_MEANING = {
    "num_layers": "Transformer layers",
    "d_model": "Model width",
    "num_heads": "Query heads",
    "num_kv_heads": "Key/value heads; < num_heads is GQA",
    "mlp_dim": "MLP hidden width",
    "vocab_size": "Vocabulary size",
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One flag: its default, help and type (choices make it an enum; None a free string)."""

    default: Any
    help: str
    integer: bool = False
    choices: tuple[str, ...] | None = None


SHARED: dict[str, Spec] = {
    "checkpoint": Spec(None, "Training workdir or converted model directory."),
    "preset": Spec(None, "Model preset (model/config.py: tiny, gpt2_124m, llama_1b, ...); the size "
                         "flags override it."),
    **{name: Spec(None, f"{meaning} (default: the preset's).", integer=True)
       for name, meaning in _SIZE_MEANING.items()},
    "mesh": Spec("", "Device mesh, e.g. data=2,fsdp=-1,tensor=2 (one -1 takes the remaining "
                     "devices); empty puts every device on data."),
    "quant": Spec("none", "int8 (weights), int8_kv (KV cache), int8+int8_kv, or none (as saved); "
                          "a float model is quantized after loading (docs/inference.md)."),
    "dtype": Spec(None, "Compute dtype (default: the model's own; params keep their storage "
                        "dtype).", choices=DTYPES),
}


def define_model_flags(*names: str, values: flags.FlagValues = flags.FLAGS,
                       **changes: Mapping[str, Any]) -> None:
    """Registers the named flags ("sizes": all six size flags) with their shared spec;
    `changes[name]` replaces fields of it: {"default": ..., "help": ..., "choices": ...}.

    A size flag given a default of its own gets help that says it replaces the preset's."""
    wanted = [n for name in names for n in (SIZE_FLAGS if name == "sizes" else (name,))]
    if unknown := (set(wanted) | set(changes)) - set(SHARED):
        raise ValueError(f"not model flags: {sorted(unknown)}")
    if stray := set(changes) - set(wanted):
        raise ValueError(f"changes given for flags not defined: {sorted(stray)}")
    for name in wanted:
        change = dict(changes.get(name, {}))
        if name in SIZE_FLAGS and change.get("default") is not None and "help" not in change:
            change["help"] = f"{_SIZE_MEANING[name]}, in place of the preset's."
        spec = dataclasses.replace(SHARED[name], **change)
        if spec.choices:
            flags.DEFINE_enum(name, spec.default, list(spec.choices), spec.help,
                              flag_values=values)
        elif spec.integer:
            flags.DEFINE_integer(name, spec.default, spec.help, flag_values=values)
        else:
            flags.DEFINE_string(name, spec.default, spec.help, flag_values=values)


def size_overrides(values: flags.FlagValues = flags.FLAGS) -> dict[str, int]:
    """The size flags that were set, as keyword overrides of a preset's ModelConfig."""
    return {name: values[name].value for name in SIZE_FLAGS if values[name].value is not None}
