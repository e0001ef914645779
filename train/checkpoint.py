"""Orbax checkpoints of a run: train state, data-iterator state and run metadata, saved
asynchronously and atomically under WORKDIR/checkpoints/<step>/.

Restores take abstract targets that carry shardings, so a checkpoint loads onto any mesh.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from model.errors import UserError


class Checkpointer:
    """One `CheckpointManager` with three items: `state` (arrays), `data` and `meta` (JSON)."""

    def __init__(self, workdir: str, keep: int = 3, keep_period: int = 0, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(keep, 1), keep_period=keep_period or None,
            enable_async_checkpointing=async_save,
            # A save killed midway leaves a *.orbax-checkpoint-tmp dir; it is never listed as a
            # step and is removed on the next start.
            cleanup_tmp_directories=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, meta: dict, force: bool = False) -> None:
        """Starts an async save; device arrays are copied to host before this returns, so the
        caller may donate `state` to the next step right away."""
        self.manager.save(step, force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state placed as `abstract_state`'s shardings say, data-iterator state, metadata)."""
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError) as e:
            raise UserError(f"checkpoint {self.directory}/{step} does not match this run's model "
                            f"or optimizer ({str(e).splitlines()[0][:200]}); use a new --workdir "
                            f"or the flags that wrote it") from None
        return out.state, out.data, out.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(path: str, abstract_params: Any) -> Any:
    """Params of the latest checkpoint in a workdir (or converted model dir) at `path`, placed as
    `abstract_params` says; the optimizer state there is not read (fine-tuning starts it fresh)."""
    directory = os.path.join(os.path.abspath(path), "checkpoints")
    if not os.path.isdir(directory):
        raise UserError(f"{path}: no checkpoints/ directory there; point it at a training "
                        f"workdir or a converted model")
    manager = ocp.CheckpointManager(directory, item_names=("state",))
    step = manager.latest_step()
    if step is None:
        raise UserError(f"{path}: it holds no complete checkpoint")
    target = {"params": abstract_params}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)))
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}: its params do not match this model's shapes "
                        f"({str(e).splitlines()[0][:200]})") from None
    logging.info("initialised params from %s step %d", path, step)
    return out.state["params"]


def _reader(directory: str) -> ocp.CheckpointManager:
    """A manager that can read a checkpoint's metadata (handlers named for every item, so orbax
    neither guesses nor warns)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add("state", ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler)
    for item in ("data", "meta"):
        registry.add(item, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    return ocp.CheckpointManager(directory, handler_registry=registry)


def match_pretrained(path: str, abstract_params: Any, heads: tuple[str, ...] = ("classifier",)
                     ) -> tuple[int, list[tuple[str, ...]], list[tuple[str, ...]]]:
    """Which params of the latest checkpoint at `path` a fine-tuning run loads: (step, keys to
    load, keys to initialise fresh). A param loads if the checkpoint has it in the same shape; a
    param under a top-level name in `heads` that the checkpoint lacks or holds in another shape
    (a class head of a different size) starts fresh; any other mismatch is a UserError. Reads
    metadata only, so a run can be refused before it writes anything."""
    directory = os.path.join(os.path.abspath(path), "checkpoints")
    if not os.path.isdir(directory):
        raise UserError(f"{path}: no checkpoints/ directory there; point it at a training "
                        f"workdir or a converted model")
    manager = _reader(directory)
    step = manager.latest_step()
    if step is None:
        raise UserError(f"{path}: it holds no complete checkpoint")
    stored = traverse_util.flatten_dict(dict(manager.item_metadata(step)["state"])["params"])
    manager.close()
    load, fresh = [], []
    for key, leaf in traverse_util.flatten_dict(abstract_params).items():
        if key in stored and tuple(stored[key].shape) == tuple(leaf.shape):
            load.append(key)
        elif key[0] in heads:
            fresh.append(key)
        else:
            found = tuple(stored[key].shape) if key in stored else "missing"
            raise UserError(f"{path}: param {'/'.join(key)} is {found} there but {leaf.shape} in "
                            f"this model; pass the size flags it was trained with")
    return step, load, fresh


def restore_pretrained(path: str, abstract_params: Any, fresh_params: Any,
                       heads: tuple[str, ...] = ("classifier",)) -> tuple[Any, int, list[str]]:
    """`fresh_params` with every param that `match_pretrained` loads replaced by the checkpoint's
    (placed as `abstract_params`' shardings say). Returns (params, number of param arrays loaded,
    names of the freshly initialised ones)."""
    step, load, fresh = match_pretrained(path, abstract_params, heads)
    wanted = traverse_util.flatten_dict(abstract_params)
    target = {"params": traverse_util.unflatten_dict({key: wanted[key] for key in load})}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    manager = _reader(os.path.join(os.path.abspath(path), "checkpoints"))
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))
    manager.close()
    params = traverse_util.flatten_dict(fresh_params)
    params.update(traverse_util.flatten_dict(out.state["params"]))
    logging.info("initialised params from %s step %d", path, step)
    return traverse_util.unflatten_dict(params), len(load), ["/".join(k) for k in fresh]
