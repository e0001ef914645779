"""The model directory, and the one module that reads and writes it. A training workdir and a
model made by convert, prune or quantize share its shape, so every `--checkpoint`, `--init_from`
and `--teacher` takes either; everyone else asks this module instead of opening its files.

    PATH/config.json          {"model": ModelConfig, "hf": token ids, ...} (a run adds its flags)
    PATH/checkpoints/<step>/  orbax; item "state" holds {"params": ...} (a run's also its optimizer)
    PATH/tokenizer.model      or tokenizer.json with tokenizer_config.json, special_tokens_map.json

A new directory is written into a staging dir beside PATH and renamed into place whole; one that
replaces a model keeps the old one aside until the new one is in, so a crash at any moment leaves
a whole model at PATH or one `recover` puts back there (tokenizer *objects* are data/'s).
"""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from model.abstract import abstract_params, one_device_mesh
from model.config import ModelConfig
from runtime.errors import UserError
from runtime.files import atomic_write, write_json

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
# Files a tokenizer may consist of, copied as they are (to and from HF directories too).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model")
# The file a tokenizer loads from, the first present: a SentencePiece model before a tokenizer.json.
TOKENIZERS = ("tokenizer.model", "tokenizer.json")


# -- config.json --------------------------------------------------------------------------------

def read_recorded(path: str, flag: str) -> tuple[ModelConfig, dict]:
    """The model a training workdir or converted model directory records in its config.json, and
    the whole record (flags, HF token ids). Every command that reads one (--checkpoint,
    --init_from, --teacher) refuses a bad directory with the same one-line errors."""
    recover(path)
    where = f"--{flag}={path}"
    if not os.path.exists(path):
        raise UserError(f"{where} does not exist; point it at a training workdir or a converted "
                        f"model")
    if not os.path.isdir(path):
        raise UserError(f"{where} is not a directory; point it at a training workdir or a "
                        f"converted model")
    config_path = os.path.join(path, CONFIG)
    if not os.path.isfile(config_path):
        raise UserError(f"{where} has no config.json; point it at a training workdir or a "
                        f"converted model")
    try:
        with open(config_path, encoding="utf-8") as f:
            recorded = json.load(f)
        return ModelConfig.from_dict(recorded["model"]), recorded
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{config_path} is unreadable ({e}); restore it or point --{flag} at "
                        f"another model") from None


def token_ids(recorded: dict) -> dict[str, int]:
    """The special token ids (bos/eos/pad/decoder_start_token_id) an imported model recorded."""
    hf = recorded.get("hf", {})
    return {k: v for k, v in hf.items() if k.endswith("token_id")} if isinstance(hf, dict) else {}


def write_config(path: str, record: dict) -> None:
    """PATH/config.json (atomically); `record` holds at least {"model": ModelConfig.to_dict()}."""
    write_json(os.path.join(path, CONFIG), record)


# -- checkpoints/<step>/ ------------------------------------------------------------------------

def _checkpoints(path: str) -> str:
    directory = os.path.join(os.path.abspath(path), CHECKPOINTS)
    if not os.path.isdir(directory):
        raise UserError(f"{path}: no checkpoints/ directory there; point it at a training "
                        f"workdir or a converted model")
    return directory


def _latest(path: str, manager: ocp.CheckpointManager) -> int:
    step = manager.latest_step()
    if step is None:
        raise UserError(f"{path}: it holds no complete checkpoint")
    return step


def checkpoint_reader(directory: str) -> ocp.CheckpointManager:
    """A manager that can read a checkpoint's metadata (handlers named for every item a run
    saves, so orbax neither guesses nor warns)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add("state", ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler)
    for item in ("data", "meta"):
        registry.add(item, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    return ocp.CheckpointManager(directory, handler_registry=registry)


def stored_shapes(path: str) -> tuple[int, dict[tuple[str, ...], tuple[int, ...]]]:
    """(latest step, {param key: shape}) of the model at `path`, from metadata only (fast, and no
    memory for the arrays)."""
    manager = checkpoint_reader(_checkpoints(path))
    try:
        step = _latest(path, manager)
        stored = dict(manager.item_metadata(step)["state"])["params"]
    finally:
        manager.close()
    return step, {key: tuple(leaf.shape)
                  for key, leaf in traverse_util.flatten_dict(stored).items()}


def restore_params(path: str, abstract: Any, step: int | None = None) -> Any:
    """Params of the latest checkpoint (or `step`) in a workdir or model directory at `path`,
    placed as `abstract`'s shardings say; the optimizer state there is not read. `abstract` may
    name a subset of the stored params (the others are not read)."""
    manager = ocp.CheckpointManager(_checkpoints(path), item_names=("state",))
    step = _latest(path, manager) if step is None else step
    target = {"params": abstract}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)))
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}: its params do not match this model's shapes "
                        f"({str(e).splitlines()[0][:200]})") from None
    finally:
        manager.close()
    logging.info("initialised params from %s step %d", path, step)
    return out.state["params"]


def restore_flat(path: str, config: ModelConfig) -> dict:
    """The latest checkpoint's params, flat ("layers/mlp/wi/kernel"), on one device (no copy per
    device of a mesh)."""
    params = restore_params(path, abstract_params(config, one_device_mesh()))
    return traverse_util.flatten_dict(params, sep="/")


def write_model_dir(path: str, config: ModelConfig, params: dict[str, np.ndarray], hf: dict,
                    extra: dict | None = None) -> None:
    """config.json ({"model", "hf", **extra}) + checkpoints/0 holding the flat `params` (the
    state item `restore_params` reads) into the directory `path`."""
    write_config(path, {"model": config.to_dict(), "hf": hf, **(extra or {})})
    nested = traverse_util.unflatten_dict(params, sep="/")
    manager = ocp.CheckpointManager(os.path.join(path, CHECKPOINTS), item_names=("state",),
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": nested})))
    manager.wait_until_finished()
    manager.close()


# -- tokenizer files ----------------------------------------------------------------------------

def tokenizer_file(path: str) -> str | None:
    """The file the tokenizer of the model directory `path` loads from, or None if it has none."""
    for name in TOKENIZERS:
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    return None


def _copy(source: str, target: str) -> None:
    with open(source, "rb") as src, atomic_write(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


def copy_tokenizer(src: str, dst: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """Copies the tokenizer files present in the directory `src` into `dst`; `aliases` (T5's
    spiece.model) become tokenizer.model. Returns the names written."""
    copied = []
    for name in TOKENIZER_FILES + aliases:
        path = os.path.join(src, name)
        target = "tokenizer.model" if name in aliases else name
        if os.path.isfile(path) and target not in copied:
            _copy(path, os.path.join(dst, target))
            copied.append(target)
    return copied


def write_tokenizer(files: dict[str, str], dst: str) -> None:
    """Copies a tokenizer's files ({name in the model directory: where it is now}) into `dst`."""
    for name, source in files.items():
        _copy(source, os.path.join(dst, name))


# -- a new directory, whole or not at all -------------------------------------------------------

def check_out(out: str, overwrite: bool) -> None:
    """Refuses an `out` that is a file, or a non-empty directory without --overwrite."""
    out = os.path.abspath(out)
    recover(out)  # a model an interrupted --overwrite moved aside is still there: protect it
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out={out} is a file; name a directory to create")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise UserError(f"--out={out} exists and is not empty; choose a new directory or pass "
                        f"--overwrite")


def staging_dir(out: str) -> str:
    """A temp dir beside `out` to write into, renamed into place when everything is written."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=".convert-", dir=parent)
    except OSError as e:
        raise UserError(f"cannot write beside --out={out} ({e.strerror})") from None


def aside_path(out: str) -> str:
    """Where `move_into_place` keeps the model it replaces until the new one is in."""
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.replaced")


def recover(path: str) -> None:
    """Puts back the model an interrupted `move_into_place` moved aside, if `path` is missing.
    The aside copy is always whole: it is renamed away (never deleted in place) before deletion."""
    path = os.path.abspath(path)
    aside = aside_path(path)
    if os.path.lexists(path) or not os.path.isdir(aside):
        return
    try:
        os.replace(aside, path)
    except OSError as e:
        if os.path.isdir(path):
            return  # another process (host) put it back first
        raise UserError(f"{path} is missing: an interrupted --overwrite left the model that was "
                        f"there in {aside}, and it cannot be moved back ({e.strerror}); move it "
                        f"back to {path} by hand") from None
    logging.warning("%s was missing: put back the model an interrupted --overwrite had moved to "
                    "%s", path, aside)


def _discard(directory: str) -> None:
    """Deletes `directory` under another name, so a crash midway leaves no half model under a
    name `recover` restores from."""
    trash = f"{directory}.deleting"
    if os.path.isdir(directory):
        if os.path.isdir(trash):
            shutil.rmtree(trash)
        os.replace(directory, trash)
    if os.path.isdir(trash):
        shutil.rmtree(trash)


def move_into_place(tmp: str, out: str) -> None:
    """Renames the finished directory `tmp` to `out`. A model already at `out` is moved aside
    first and deleted only once the new one is in: at every moment `out` holds the old or the new
    model, or (between the two renames) the aside copy holds the old one for `recover`."""
    out = os.path.abspath(out)
    aside = aside_path(out)
    recover(out)
    _discard(aside)  # `out` is whole now, so an aside copy left by an earlier crash is stale
    if not os.path.isdir(out):
        os.replace(tmp, out)
        return
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)  # the old model back at once (after a crash, `recover` does it)
        raise
    _discard(aside)


@contextlib.contextmanager
def staged(out: str) -> Iterator[str]:
    """`with staged(out) as tmp: <write into tmp>`: `out` becomes the written directory whole,
    or (on an error) stays as it was, with nothing left behind."""
    tmp = staging_dir(out)
    try:
        yield tmp
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
