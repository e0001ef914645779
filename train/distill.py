"""The teacher of `--objective=distill`: a trained model read with its own config.json, its params
on the run's mesh, and the logits it adds to every batch for the student's loss to match.

Its params are arguments of its own jitted forward pass, never constants of the student's step,
which (train/step.py, the same for every objective) only sees one more batch array.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from model import sharding, store
from model.abstract import abstract_params, shardings_of
from model.config import ModelConfig
from model.family import build_model, family_of
from runtime.errors import UserError
from train.flags import TrainConfig
from train.objectives import PREDICTIONS, Batch
from train.tasks import DISTILLED


def read_teacher(cfg: TrainConfig) -> ModelConfig | None:
    """The --teacher's model config (None without --teacher), refused unless it is a decoder or
    an encoder with its masked-LM head: the models that predict a token at every position."""
    if not cfg.teacher:
        return None  # get_task refuses --objective=distill without one
    if cfg.objective != "distill":
        raise UserError(f"--teacher is read only by --objective=distill (not "
                        f"--objective={cfg.objective}); drop it or pass --objective=distill")
    teacher, _ = store.read_recorded(cfg.teacher, "teacher")
    if family_of(teacher).pretraining not in DISTILLED:
        raise UserError(f"--teacher={cfg.teacher} is a model of the {teacher.family} family; "
                        f"--objective=distill takes a decoder (clm) or encoder (mlm) teacher")
    if not teacher.mlm_head:  # only an encoder can lack it (ModelConfig.validated)
        raise UserError(f"--teacher={cfg.teacher} is an encoder without a masked-LM head (a "
                        f"classifier); distill from one that predicts tokens")
    return teacher


def check_student(cfg: TrainConfig, student: ModelConfig, teacher: ModelConfig) -> None:
    """The student reads the teacher's batches and matches its logits entry by entry."""
    family = family_of(teacher)
    if family_of(student) is not family:
        raise UserError(f"--teacher={cfg.teacher} is of the {teacher.family} family but "
                        f"--preset={cfg.preset} of the {student.family} family; distill into a "
                        f"student of the teacher's family (e.g. --preset={family.example_preset})")
    if student.vocab_size != teacher.vocab_size:
        raise UserError(f"the student's vocab_size={student.vocab_size} differs from the "
                        f"teacher's {teacher.vocab_size} (--teacher={cfg.teacher}); the KL "
                        f"compares their logits token by token: drop --vocab_size")
    if teacher.positions == "learned" and cfg.seq_len > teacher.max_len:
        raise UserError(f"--seq_len={cfg.seq_len} is longer than the teacher's position table "
                        f"({teacher.max_len}, --teacher={cfg.teacher}); use --seq_len <= "
                        f"{teacher.max_len}")


class Teacher:
    """A frozen model on the run's mesh; `annotate` is the run's batch hook (train/prepare.py)."""

    def __init__(self, path: str, config: ModelConfig, mesh: Mesh):
        # The positions the student is scored at: those of its family's pretraining batches.
        predict = PREDICTIONS[family_of(config).pretraining]
        model = build_model(config)
        # The training rules table: a teacher larger than one device loads fsdp- or
        # tensor-parallel, exactly as the student's params are laid out.
        abstract = abstract_params(config, mesh)
        shardings = shardings_of(abstract)
        self.params = store.restore_params(path, abstract)

        def logits(params, batch: Batch) -> jax.Array:
            # The model's logical constraints need the mesh and rules; entered inside the trace
            # (set_mesh may not be), so `annotate` runs under jax.eval_shape or any caller.
            with (jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
                  nn.logical_axis_rules(sharding.RULES)):
                return predict(model, params, batch)[0].astype(jnp.float32)

        # Rows split over the batch axes as train/step.py's batch_shardings lays out every batch
        # array (one spec, a prefix of any rank), the vocabulary whole.
        self._logits = jax.jit(logits, in_shardings=(shardings, sharding.named(mesh, "batch")),
                               out_shardings=sharding.named(mesh, "batch", None, None))

    def annotate(self, batch: Batch) -> Batch:
        """`batch` (global arrays) and its "teacher_logits": float32[batch, length, vocab]."""
        return {**batch, "teacher_logits": self._logits(self.params, batch)}
