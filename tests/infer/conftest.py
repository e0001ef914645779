"""One tiny trained workdir shared by the inference tests."""

import pytest

from train.flags import TrainConfig
from train.loop import train

CFG = TrainConfig(preset="tiny", vocab_size=512, seq_len=32, batch_size=8, steps=4,
                  warmup_steps=1, log_every=2, eval_every=0, save_every=4)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    cfg = CFG.replace(workdir=str(tmp_path_factory.mktemp("trained")))
    train(cfg)
    return cfg.workdir
