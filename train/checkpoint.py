"""Orbax checkpoints of a run: train state, data-iterator state and run metadata, saved
asynchronously and atomically under WORKDIR/checkpoints/<step>/.

Restores take abstract targets that carry shardings, so a checkpoint loads onto any mesh.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

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
