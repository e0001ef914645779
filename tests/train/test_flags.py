"""Flags: every one documented, flag files parse into valid runs, flags.txt round-trips."""

import dataclasses
import glob
import math

import pytest
from absl import flags

from model import sharding
from model.config import get_preset
from train.flags import MODEL_OVERRIDES, TrainConfig, config_from_flags, define_flags, flagfile_text

define_flags()
FLAGS = flags.FLAGS


def _parse(*args):
    FLAGS.unparse_flags()
    FLAGS(["train", *args])
    return config_from_flags(FLAGS)


def test_every_flag_has_help():
    for field in dataclasses.fields(TrainConfig):
        assert len(field.metadata["help"]) > 15, field.name
        assert FLAGS[field.name].help


def test_command_line_overrides_flag_file():
    cfg = _parse("--flagfile=experiments/quickstart.flags", "--steps=7")
    assert cfg.steps == 7 and cfg.preset == "tiny_llama"


def test_flags_txt_round_trips(tmp_path):
    cfg = TrainConfig(workdir="w", steps=11, num_layers=3, scan_layers=False, learning_rate=2e-4)
    path = tmp_path / "flags.txt"
    path.write_text(flagfile_text(cfg))
    assert _parse(f"--flagfile={path}") == cfg


@pytest.mark.parametrize("path", sorted(glob.glob("experiments/*.flags")))
def test_experiment_flag_files_resolve(path):
    cfg = _parse(f"--flagfile={path}")
    assert cfg.workdir
    model = get_preset(cfg.preset).replace(**{k: getattr(cfg, k) for k in MODEL_OVERRIDES})
    assert model.num_params() > 0
    sizes = sharding.parse_mesh(cfg.mesh, 8)
    assert cfg.batch_size % (math.prod(sizes[a] for a in ("data", "fsdp")) * cfg.grad_accum) == 0
