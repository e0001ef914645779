"""model/store.py, the one owner of the model directory: what it writes reads back; an
--overwrite that crashes at any step leaves a whole model, old or new, at its path (or one that
the next command puts back there); the refusals are one line that says where the model is."""

import contextlib
import os
import shutil

import numpy as np
import pytest

from model import store
from model.abstract import param_shapes
from model.config import get_preset
from runtime.errors import UserError

CFG = get_preset("tiny")


class Crash(Exception):
    """The process dies here (or, with die=False, this one call fails)."""


def _write(path: str, value: float) -> None:
    """A tiny model whose every param entry is `value` (tells old from new, and whole from torn)."""
    params = {p: np.full(shape, value, np.float32) for p, shape in param_shapes(CFG).items()}
    store.write_model_dir(path, CFG, params, {"eos_token_id": 2}, {"note": value})


def _read(path: str) -> float:
    """The value of the model at `path`, read as the next command would; asserts it is whole."""
    cfg, recorded = store.read_recorded(path, "checkpoint")
    values = {float(v) for p in store.restore_flat(path, cfg).values() for v in np.unique(p)}
    assert len(values) == 1 and values == {recorded["note"]}, (values, recorded["note"])
    return values.pop()


def _crash_at(monkeypatch, n: int, die: bool) -> None:
    """Call n (counting os.replace and shutil.rmtree together) raises; if `die`, so does every
    later one: a dead process renames and deletes nothing more, not even in its except blocks."""
    calls = [0]

    def wrap(real):
        def call(*args, **kwargs):
            i = calls[0]
            calls[0] += 1
            if i == n or (die and i > n):
                raise Crash(f"call {i}")
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(os, "replace", wrap(os.replace))
    monkeypatch.setattr(shutil, "rmtree", wrap(shutil.rmtree))


def test_a_model_directory_reads_back_as_written(tmp_path):
    path = str(tmp_path / "m")
    os.makedirs(path)
    _write(path, 0.5)
    (tmp_path / "spiece.model").write_bytes(b"sp")
    assert store.copy_tokenizer(str(tmp_path), path, ("spiece.model",)) == ["tokenizer.model"]
    cfg, recorded = store.read_recorded(path, "checkpoint")
    assert cfg == CFG and store.token_ids(recorded) == {"eos_token_id": 2}
    assert store.tokenizer_file(path) == os.path.join(path, "tokenizer.model")
    step, shapes = store.stored_shapes(path)
    assert step == 0 and {"/".join(k): v for k, v in shapes.items()} == param_shapes(CFG)
    assert _read(path) == 0.5


# Calls of an overwrite: 0 old model aside, 1 new one in, 2 aside copy renamed for deletion,
# 3 its deletion; 4: no crash. The new model is in place from call 2 on.
@pytest.mark.parametrize("die", [True, False], ids=["dies", "fails"])
@pytest.mark.parametrize("step", range(5))
def test_an_overwrite_keeps_a_whole_model_through_a_crash_at_every_step(tmp_path, monkeypatch,
                                                                        step, die):
    out = str(tmp_path / "model")
    os.makedirs(out)
    _write(out, 1.0)
    with (pytest.raises(Crash) if step < 4 else contextlib.nullcontext(),
          store.staged(out) as tmp):
        _write(tmp, 2.0)
        _crash_at(monkeypatch, step, die)
    monkeypatch.undo()  # what the next command, a new process, finds

    assert _read(out) == (2.0 if step >= 2 else 1.0)
    with store.staged(out) as tmp:  # and the next overwrite clears what the crash left
        _write(tmp, 3.0)
    assert _read(out) == 3.0
    assert [n for n in os.listdir(tmp_path) if n.startswith(".model")] == []


def test_a_model_left_aside_is_protected_and_named_when_it_cannot_be_put_back(tmp_path,
                                                                              monkeypatch):
    out = str(tmp_path / "model")
    aside = store.aside_path(out)
    os.makedirs(aside)
    _write(aside, 1.0)  # a crash between the two renames of an overwrite left this
    store.staging_dir(out)  # ... and its staging dir

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", refuse)
        with pytest.raises(UserError, match=f"left the model that was there in {aside}"):
            store.read_recorded(out, "checkpoint")
    # A new conversion without --overwrite must not delete it: it is put back, then protected.
    with pytest.raises(UserError, match="exists and is not empty"):
        store.check_out(out, overwrite=False)
    assert _read(out) == 1.0 and not os.path.exists(aside)
