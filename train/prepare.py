"""Resolves a run before anything is written: flags -> model config, mesh, data, tokenizer,
and the workdir's existing contents. Every bad input a user can give is refused here, so a
refused run leaves the workdir exactly as it was."""

import dataclasses
import json
import os
import shutil
import tempfile

import jax
from absl import logging
from jax.sharding import Mesh

from data.corpus import Corpus, load_corpus
from data.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from model import sharding
from model.config import ModelConfig, get_preset
from model.errors import UserError
from train.flags import MODEL_OVERRIDES, TrainConfig, flagfile_text
from train.objectives import EXTRA_TOKENS, get_objective
from train.optimizer import make_optimizer

_TMP_PREFIX = "meshlm-tokenizer-"
POSITIVE = ("steps", "batch_size", "grad_accum", "log_every", "save_every", "eval_batches",
            "keep_checkpoints")


@dataclasses.dataclass
class Run:
    """Everything a validated run needs; `commit()` writes it to the workdir."""

    cfg: TrainConfig
    model: ModelConfig
    mesh: Mesh
    corpus: Corpus
    tokenizer: Tokenizer
    workdir: str
    previous: dict | None  # config.json of an earlier run in this workdir

    @property
    def row_length(self) -> int:
        return self.cfg.seq_len + EXTRA_TOKENS[self.cfg.objective]

    def commit(self, extra: dict) -> None:
        """Creates the workdir and writes tokenizer.model, config.json and flags.txt."""
        os.makedirs(self.workdir, exist_ok=True)
        target = os.path.join(self.workdir, "tokenizer.model")
        if os.path.abspath(self.tokenizer.path) != os.path.abspath(target):
            with open(self.tokenizer.path, "rb") as src:
                _atomic_write(target, src.read())
            if os.path.basename(os.path.dirname(self.tokenizer.path)).startswith(_TMP_PREFIX):
                shutil.rmtree(os.path.dirname(self.tokenizer.path), ignore_errors=True)
            self.tokenizer.path = target
        config = {"flags": self.cfg.to_flags(), "model": self.model.to_dict(),
                  "corpus": self.corpus.fingerprint, **extra}
        _atomic_write(os.path.join(self.workdir, "config.json"),
                      json.dumps(config, indent=2).encode())
        _atomic_write(os.path.join(self.workdir, "flags.txt"), flagfile_text(self.cfg).encode())


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _check_numbers(cfg: TrainConfig) -> None:
    for name in POSITIVE:
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.seq_len < 2:
        raise UserError(f"--seq_len must be at least 2, got {cfg.seq_len}")
    if cfg.learning_rate < 0 or cfg.warmup_steps < 0 or cfg.eval_every < 0:
        raise UserError("--learning_rate, --warmup_steps and --eval_every must not be negative")


def _check_batch(cfg: TrainConfig, mesh: Mesh) -> None:
    shards = sharding.batch_shards(mesh)
    if cfg.batch_size % (shards * cfg.grad_accum):
        raise UserError(f"--batch_size={cfg.batch_size} must be divisible by the data-parallel "
                        f"size {shards} (mesh {dict(mesh.shape)}) times --grad_accum="
                        f"{cfg.grad_accum}; use a multiple of {shards * cfg.grad_accum}")
    if cfg.batch_size % jax.process_count():
        raise UserError(f"--batch_size={cfg.batch_size} must be divisible by the number of "
                        f"hosts {jax.process_count()}")


def _read_previous(workdir: str) -> dict | None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a directory; choose another path")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e}); restore it or use a new --workdir") from None


def _tokenizer(cfg: TrainConfig, workdir: str, corpus: Corpus, vocab_size: int) -> Tokenizer:
    """The workdir's tokenizer if resuming, else --tokenizer, else one trained on the data (into
    a temp dir: it reaches the workdir only when the whole run has been validated)."""
    own = os.path.join(workdir, "tokenizer.model")
    if os.path.exists(own):
        return load_tokenizer(own)
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    logging.info("training a %d-piece tokenizer on %s", vocab_size, cfg.data)
    return train_tokenizer(corpus.train, vocab_size,
                           os.path.join(tempfile.mkdtemp(prefix=_TMP_PREFIX), "tokenizer.model"))


def prepare(cfg: TrainConfig) -> Run:
    if not cfg.workdir:
        raise UserError("--workdir is required: the directory for this run's checkpoints and "
                        "metrics")
    _check_numbers(cfg)
    get_objective(cfg.objective)
    make_optimizer(cfg)  # refuses unknown optimizers and schedules
    overrides = {name: getattr(cfg, name) for name in MODEL_OVERRIDES}
    model_cfg = get_preset(cfg.preset).replace(**overrides)
    model_cfg = model_cfg.replace(max_len=max(model_cfg.max_len, cfg.seq_len))
    mesh = sharding.make_mesh(cfg.mesh)
    _check_batch(cfg, mesh)
    workdir = os.path.abspath(cfg.workdir)
    previous = _read_previous(workdir)
    corpus = load_corpus(cfg.data, cfg.eval_fraction)
    if previous and previous.get("corpus", {}).get("sha256") != corpus.fingerprint["sha256"]:
        logging.warning("the corpus differs from the one this workdir was trained on (%s, python "
                        "%s, now python %s): resuming continues on different data",
                        previous["corpus"].get("source"), previous["corpus"].get("python"),
                        corpus.fingerprint["python"])
    tokenizer = _tokenizer(cfg, workdir, corpus, model_cfg.vocab_size)
    if cfg.vocab_size is None:
        model_cfg = model_cfg.replace(vocab_size=tokenizer.vocab_size)
    elif cfg.vocab_size < tokenizer.vocab_size:
        raise UserError(f"--vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.vocab_size} pieces ({tokenizer.path}); raise it or drop it")
    if previous and previous.get("model") != model_cfg.to_dict():
        changed = sorted(k for k, v in model_cfg.to_dict().items()
                         if previous.get("model", {}).get(k) != v)
        raise UserError(f"--workdir={cfg.workdir} holds a run of a different model (differs in "
                        f"{', '.join(changed)}); use a new --workdir or the original flags")
    return Run(cfg=cfg, model=model_cfg, mesh=mesh, corpus=corpus, tokenizer=tokenizer,
               workdir=workdir, previous=previous)
