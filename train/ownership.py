"""A run's ownership of its workdir: which files a run writes (and so which --overwrite may
delete), the earlier run found there, and whether the disk can take this one. Checked before
anything is written; deleting happens only when every other check of the run has passed."""

import fnmatch
import json
import os
import shutil

from absl import logging

from data.hf_tokenizer import SPECIAL_FILES, HFTokenizer
from data.sentencepiece_tokenizer import Tokenizer
from model.config import ModelConfig
from runtime.errors import UserError
from train.flags import TrainConfig

# What a run writes into its workdir (fnmatch patterns of top-level names), and so all that
# --overwrite may delete: the workdir contract (DESIGN.md), loss.png, the damaged checkpoints
# a resume moved aside, and the temp files of interrupted atomic writes. Anything else in the
# workdir is the user's and is never touched.
_RUN_FILES = ("config.json", "flags.txt", "metrics.jsonl", "loss.png", "tokenizer.model",
              "tokenizer.json", *SPECIAL_FILES)
_WRITTEN = ("checkpoints", "damaged_checkpoints", "events.out.tfevents.*", *_RUN_FILES,
            *(f"{name}.tmp*" for name in _RUN_FILES))
# What only a run that got as far as training leaves: without config.json, such files are from a
# run (or a tool) this one cannot identify, and resuming from them would mix runs.
_TRAINED = ("checkpoints", "metrics.jsonl", "events.out.tfevents.*")
# Float32 arrays per param in a checkpoint (the param plus its optimizer moments).
_ARRAYS_PER_PARAM = {"adamw": 3, "sgd": 2, "adafactor": 1}


def read_previous(workdir: str, overwrite: bool) -> dict | None:
    """config.json of the earlier run in `workdir`, None if there is none (or --overwrite will
    discard it anyway)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a directory; choose another path")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        # An empty checkpoints/ (a run stopped before its first save) holds nothing to protect.
        checkpoints = os.path.join(workdir, "checkpoints")
        empty = os.path.isdir(checkpoints) and not os.listdir(checkpoints)
        found = [n for n in run_files(workdir, _TRAINED) if not (n == "checkpoints" and empty)]
        if found and not overwrite:
            raise UserError(f"--workdir={workdir} holds {', '.join(found)} but no config.json, "
                            f"so they are from a run this one cannot identify; use a new "
                            f"--workdir, or pass --overwrite to delete them")
        return None
    if overwrite:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e}); restore it, use a new --workdir, or pass "
                        f"--overwrite to discard that run") from None


def run_files(workdir: str, patterns: tuple[str, ...] = _WRITTEN) -> list[str]:
    """The top-level names in `workdir` that match `patterns` (names a run writes), sorted."""
    if not os.path.isdir(workdir):
        return []
    return [name for name in sorted(os.listdir(workdir))
            if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_writable(workdir: str) -> None:
    """Refuses a workdir that cannot be created or written (os.access also sees read-only
    mounts, where root is refused too)."""
    where = _existing_ancestor(workdir)
    if not os.path.isdir(where):
        raise UserError(f"--workdir={workdir} is below the file {where}; choose another path")
    checkpoints = os.path.join(workdir, "checkpoints")
    for path in (where, *([checkpoints] if os.path.isdir(checkpoints) else [])):
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"--workdir={workdir} is not writable ({path} is read-only or not "
                            f"yours); choose another --workdir or fix its permissions")


def check_space(cfg: TrainConfig, workdir: str, model: ModelConfig) -> None:
    """Refuses a filesystem without room for one more checkpoint, instead of failing (and
    leaving a partial checkpoint) at the first save, after the time spent training."""
    usage = shutil.disk_usage(_existing_ancestor(workdir))
    arrays = _ARRAYS_PER_PARAM.get(cfg.optimizer, 3)
    if cfg.optimizer == "sgd" and not cfg.beta1:
        arrays = 1
    # Half the float32 bytes (orbax may compress them) plus 1 MiB for metadata, config and logs:
    # a lower bound, so that only a run that is sure to fail is refused.
    need = 2 * model.num_params() * arrays + (1 << 20)
    if usage.total and usage.free < need:  # some network filesystems report no size at all
        raise UserError(f"--workdir={workdir} has {usage.free / 2**20:.1f} MiB free, but a "
                        f"checkpoint of this model needs at least {need / 2**20:.1f} MiB; free "
                        f"space or choose a --workdir on a larger disk")


def check_overwrite(cfg: TrainConfig, workdir: str, tokenizer: Tokenizer | HFTokenizer,
                     discard: list[str]) -> None:
    """Refuses an --overwrite that would delete one of this run's own inputs."""
    doomed = [os.path.realpath(os.path.join(workdir, name)) for name in discard]

    def inside(path: str) -> bool:
        path = os.path.realpath(path)
        return any(path == d or path.startswith(d + os.sep) for d in doomed)

    if cfg.init_from and os.path.realpath(cfg.init_from) == os.path.realpath(workdir):
        raise UserError(f"--overwrite would delete --init_from={cfg.init_from}, which is the "
                        f"--workdir; fine-tune into a new --workdir")
    if any(inside(path) for path in tokenizer.files.values()):
        raise UserError(f"--overwrite would delete --tokenizer={cfg.tokenizer}, which is in the "
                        f"--workdir; copy it elsewhere first")


def delete_run(workdir: str, names: list[str]) -> None:
    for name in names:
        path = os.path.join(workdir, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except OSError as e:
            raise UserError(f"--overwrite could not delete {path} ({e.strerror}); delete it "
                            f"yourself or choose a new --workdir") from None
    logging.warning("--overwrite: deleted %s from %s", ", ".join(names), workdir)
