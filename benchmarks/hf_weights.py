"""Our params loaded into a HF transformers torch model, so a benchmark's peer runs the very
weights ours runs and their outputs can be checked equal before a speed ratio is reported
(docs/benchmarks.md). The tensor mapping is model/hf's, the one `model.convert --to_hf` writes."""

import jax
import numpy as np
from flax import traverse_util

from model.config import ModelConfig
from model.hf import architectures
from model.hf.rules import export_tensors


def hf_tensors(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
    """{HF tensor name: array} of our (possibly sharded) params."""
    module, architecture = architectures.for_ours(cfg)
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    return dict(export_tensors(module.rules(cfg, architecture), flat))


def load_into(model, cfg: ModelConfig, params) -> None:
    """Copies our params into `model` (a torch HF model of cfg's shape); refuses to leave any of
    its weights at their random init."""
    import torch

    tensors = {name: torch.from_numpy(np.array(a)) for name, a in hf_tensors(cfg, params).items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"our params do not cover the HF model: missing "
                           f"{sorted(set(missing) - tied)[:4]}, unexpected {unexpected[:4]}")
    if cfg.tie_embeddings:
        model.tie_weights()
