"""Which architecture module handles a HF directory (import) or one of our models (export)."""

from types import ModuleType

from model.config import ModelConfig
from model.hf import bert, gpt2, llama, t5
from runtime.errors import UserError

MODULES: tuple[ModuleType, ...] = (gpt2, llama, bert, t5)
SUPPORTED = tuple(a for m in MODULES for a in m.ARCHITECTURES)


def for_hf(hf: dict, source: str) -> tuple[ModuleType, str]:
    """(module, HF class name) from config.json's `architectures`, else its `model_type`."""
    listed = hf.get("architectures") or []
    for module in MODULES:
        for architecture in listed:
            if architecture in module.ARCHITECTURES:
                return module, architecture
    if not listed:
        for module in MODULES:
            if hf.get("model_type") == module.MODEL_TYPE:
                return module, module.ARCHITECTURES[0]
    raise UserError(f"{source}: architecture {listed or hf.get('model_type')} is not supported; "
                    f"meshlm converts {', '.join(SUPPORTED)}")


def for_ours(cfg: ModelConfig, wanted: str = "", objective: str | None = None
             ) -> tuple[ModuleType, str]:
    """(module, HF class name) to export `cfg` as: `wanted` if given, else the one the family,
    positions and (for BERT) the training objective imply. Refuses a model the class cannot
    represent, naming what differs."""
    if wanted:
        matches = [m for m in MODULES if wanted in m.ARCHITECTURES]
        if not matches:
            raise UserError(f"--architecture={wanted} is not one of {', '.join(SUPPORTED)}")
        module, architecture = matches[0], wanted
    elif cfg.family == "decoder":
        module = llama if cfg.positions == "rope" else gpt2
        architecture = module.ARCHITECTURES[0]
    elif cfg.family == "encoder":
        module, architecture = bert, bert.architecture_of(cfg, objective)
    else:
        module, architecture = t5, t5.ARCHITECTURES[0]
    bad = module.mismatches(cfg, architecture)
    if bad:
        raise UserError(f"this model cannot be written as {architecture}: it has "
                        f"{', '.join(bad[:4])}; transformers has no such option")
    return module, architecture
