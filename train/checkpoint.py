"""Orbax checkpoints of a run: train state, data-iterator state and run metadata, saved
asynchronously and atomically under WORKDIR/checkpoints/<step>/, and the params a fine-tune takes
from a pretrained model (read through model/store.py, the model directory's owner).

Restores take abstract targets that carry shardings, so a checkpoint loads onto any mesh.
"""

import contextlib
import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from model import store
from runtime.errors import UserError


class DamagedCheckpoint(UserError):
    """A checkpoint that cannot be read back: a file truncated, deleted or garbled on disk."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"checkpoint {step} is damaged ({reason})")
        self.step, self.reason = step, reason


def _root(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _reason(error: BaseException, directory: str) -> str:
    """The root cause of a failed restore in one short line (tensorstore appends its whole
    spec as JSON; orbax wraps it in a generic Exception; paths are shown from the step on)."""
    error = _root(error)
    text = (str(error).split(" [tensorstore_spec")[0].strip().splitlines() or [""])[0]
    text = text.replace(f"{directory}/", "")
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# What tensorstore's own errors say (they reach asyncio from C++, with no orbax frame to see).
_TENSORSTORE_ERRORS = ("OCDBT", "tensorstore", "OUT_OF_RANGE", "FAILED_PRECONDITION",
                       "NOT_FOUND", "DATA_LOSS", "Zstd")


def _from_orbax(error: BaseException | None) -> bool:
    frames = traceback.extract_tb(error.__traceback__) if error is not None else []
    text = str(error)
    return ("Event loop is closed" in text or any("/orbax/" in f.filename for f in frames)
            or any(marker in text for marker in _TENSORSTORE_ERRORS))


class _DropOrbaxNoise(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not ("exception was never retrieved" in record.getMessage() and _from_orbax(error))


def _silence_failed_reads() -> None:
    """A failed restore leaves orbax's other reads of that checkpoint failing in the background:
    each prints a traceback when collected ("Exception ignored in", "... exception was never
    retrieved", or "Event loop is closed" from a tensorstore callback into the loop orbax closed),
    some only at exit. The failure is already reported in one line, so those are dropped; every
    other unraisable exception and asyncio error passes. Installed once, on the first failure."""
    global _SILENCED
    if _SILENCED:
        return
    hook = sys.unraisablehook

    def drop_orbax(unraisable):
        if not _from_orbax(unraisable.exc_value):
            hook(unraisable)

    sys.unraisablehook = drop_orbax
    std_logging.getLogger("asyncio").addFilter(_DropOrbaxNoise())
    _SILENCED = True


_SILENCED = False


@contextlib.contextmanager
def _quiet():
    """Orbax's absl warnings about a checkpoint it cannot read (the caller reports it)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


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
        """(state placed as `abstract_state`'s shardings say, data-iterator state, metadata).

        A checkpoint whose metadata describes another state is a UserError (the run's flags
        changed); any other failure to read it is a `DamagedCheckpoint`."""
        try:
            with _quiet():
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore()))
        # Orbax and tensorstore raise bare Exception, ValueError, OSError, KeyError or a JSON
        # error for a truncated or missing file, and ValueError for a tree that differs; the
        # metadata decides which it was.
        except Exception as e:
            if isinstance(_root(e), (MemoryError, jax.errors.JaxRuntimeError)):
                raise  # no room for the arrays on this machine: the files may be fine
            _silence_failed_reads()
            mismatch = self._mismatch(step, abstract_state)
            if mismatch:
                raise UserError(f"checkpoint {self.directory}/{step} does not match this run's "
                                f"model or optimizer ({mismatch}); use a new --workdir or the "
                                f"flags that wrote it") from None
            raise DamagedCheckpoint(step, self._diagnose(step, abstract_state, e)) from None
        return out.state, out.data, out.meta

    def _diagnose(self, step: int, abstract_state: Any, error: Exception) -> str:
        """Which item of a checkpoint that failed to restore is damaged, and how: each is read
        on its own (JSON ones first, they are cheap), since orbax's error names no item."""
        items = {"data": ocp.args.JsonRestore(), "meta": ocp.args.JsonRestore(),
                 "state": ocp.args.StandardRestore(abstract_state)}
        for name, args in items.items():
            try:
                with _quiet():
                    self.manager.restore(step, args=ocp.args.Composite(**{name: args}))
            except Exception as e:  # noqa: BLE001
                return f"{name} item: {_reason(e, self.directory)}"
        return _reason(error, self.directory)

    def restore_latest(self, abstract_state: Any, warn: Callable[[str], None] = logging.warning
                       ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data-iterator state, metadata) of the newest checkpoint that reads back
        whole, or None if there is none. Each damaged newer one is reported in one line through
        `warn` and moved to WORKDIR/damaged_checkpoints/ (kept for inspection, and out of the way
        of the saves that will redo its step). If every checkpoint is damaged, nothing is moved
        and a UserError says so."""
        damaged: list[DamagedCheckpoint] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, data, meta = self.restore(step, abstract_state)
            except DamagedCheckpoint as e:
                damaged.append(e)
                continue
            for bad in damaged:
                moved = self._move_aside(bad.step)
                warn(f"checkpoint {bad.step} is damaged ({bad.reason}); resuming from step "
                     f"{step} instead (moved it to {moved})")
            if damaged:
                self.manager.reload()
            return step, state, data, meta
        if damaged:
            found = "; ".join(f"step {e.step}: {e.reason}" for e in damaged)
            raise UserError(f"no intact checkpoint in {self.directory} ({found}); move that "
                            f"directory away to start the run over")
        return None

    def _mismatch(self, step: int, abstract_state: Any) -> str | None:
        """How the saved state's tree differs from `abstract_state`, or None if it does not (or
        its metadata cannot be read, which is damage, not a mismatch)."""
        reader = store.checkpoint_reader(self.directory)
        try:
            with _quiet():
                saved = ocp.tree.to_flat_dict(dict(reader.item_metadata(step)["state"]))
        except Exception:  # noqa: BLE001 (unreadable metadata: the checkpoint is damaged)
            return None
        finally:
            reader.close()
        wanted = ocp.tree.to_flat_dict(abstract_state)
        for key in sorted(set(saved) ^ set(wanted)):
            where = "only in the checkpoint" if key in saved else "missing from the checkpoint"
            return f"{'/'.join(map(str, key))} is {where}"
        for key, leaf in wanted.items():
            if tuple(saved[key].shape) != tuple(leaf.shape):
                return (f"{'/'.join(map(str, key))} is {tuple(saved[key].shape)} there but "
                        f"{tuple(leaf.shape)} here")
        return None

    def _move_aside(self, step: int) -> str:
        parent = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
        target, n = os.path.join(parent, str(step)), 1
        while os.path.exists(target):  # the same step may be damaged again in a later run
            target, n = os.path.join(parent, f"{step}.{n}"), n + 1
        if jax.process_index() == 0:  # one host moves it; the others wait until it has
            os.makedirs(parent, exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"meshlm damaged checkpoint {step}")
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def match_pretrained(path: str, abstract_params: Any, heads: tuple[str, ...] = ("classifier",)
                     ) -> tuple[int, list[tuple[str, ...]], list[tuple[str, ...]]]:
    """Which params of the latest checkpoint at `path` a fine-tuning run loads: (step, keys to
    load, keys to initialise fresh). A param loads if the checkpoint has it in the same shape; a
    param under a top-level name in `heads` that the checkpoint lacks or holds in another shape
    (a class head of a different size) starts fresh; any other mismatch is a UserError. Reads
    metadata only, so a run can be refused before it writes anything."""
    step, stored = store.stored_shapes(path)
    load, fresh = [], []
    for key, leaf in traverse_util.flatten_dict(abstract_params).items():
        if key in stored and stored[key] == tuple(leaf.shape):
            load.append(key)
        elif key[0] in heads:
            fresh.append(key)
        else:
            found = stored.get(key, "missing")
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
    loaded = store.restore_params(
        path, traverse_util.unflatten_dict({key: wanted[key] for key in load}), step)
    params = traverse_util.flatten_dict(fresh_params)
    params.update(traverse_util.flatten_dict(loaded))
    return traverse_util.unflatten_dict(params), len(load), ["/".join(k) for k in fresh]
