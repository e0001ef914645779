"""Objective, model family, data and --init_from that don't fit together are refused before
anything is written: one line (exit code 2 from the command line), no workdir."""

import json
import os
import subprocess
import sys

import pytest

from data.corpus import load_corpus, sample
from data.sentencepiece_tokenizer import BERT_SYMBOLS, train_tokenizer
from data.span import SENTINELS
from model.config import get_preset
from runtime.errors import UserError
from train.flags import TrainConfig
from train.loop import train

SMALL = TrainConfig(vocab_size=512, seq_len=32, batch_size=8, steps=2, eval_every=0)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    texts = sample(load_corpus("stdlib").train, 200_000)
    directory = tmp_path_factory.mktemp("tok")
    return {"plain": train_tokenizer(texts, 512, str(directory / "plain.model")).path,
            "bert": train_tokenizer(texts, 512, str(directory / "bert.model"),
                                    extra_symbols=BERT_SYMBOLS).path,
            "t5": train_tokenizer(texts, 700, str(directory / "t5.model"),
                                  extra_symbols=SENTINELS).path}


def _fake_run(path, model, tokenizer=None):
    """A directory that looks like a finished workdir's config (and tokenizer), no checkpoint."""
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model": model.to_dict()}, f)
    if tokenizer:
        with open(tokenizer, "rb") as src, open(os.path.join(path, "tokenizer.model"), "wb") as dst:
            dst.write(src.read())
    return str(path)


def _jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


@pytest.fixture
def paths(tmp_path, tokenizers):
    """Fake --init_from runs (a config.json and a tokenizer, no checkpoint) and .jsonl files."""
    bert = get_preset("tiny_bert").replace(vocab_size=512)
    return {
        "encoder": _fake_run(tmp_path / "encoder", bert, tokenizers["bert"]),
        "narrow": _fake_run(tmp_path / "narrow", bert.replace(d_model=32), tokenizers["bert"]),
        "decoder": _fake_run(tmp_path / "decoder", get_preset("tiny").replace(vocab_size=512)),
        "one_label": _jsonl(tmp_path / "one.jsonl",
                            [{"text": f"x = {i}", "label": "a"} for i in range(9)]),
        "three_labels": _jsonl(tmp_path / "three.jsonl",
                               [{"text": f"x = {i}", "label": "abc"[i % 3]} for i in range(30)]),
        "no_target": _jsonl(tmp_path / "pairs.jsonl", [{"source": "a", "text": "b"}]),
        **tokenizers,
    }


BERT, T5 = {"preset": "tiny_bert"}, {"preset": "tiny_t5"}
CLASSIFY = {**BERT, "objective": "classify"}
CASES = [  # (flags, with {name} taken from `paths`; what the one line must say)
    ({"preset": "tiny", "objective": "mlm"}, "trains the encoder family"),
    ({**BERT, "objective": "seq2seq"}, "trains the encoder_decoder family"),
    ({**T5, "objective": "clm"}, "trains the decoder family"),
    (CLASSIFY, "--init_from=WORKDIR"),
    ({**CLASSIFY, "init_from": "{decoder}"}, "is a decoder model"),
    # The pretrained model is used as it is; a size flag that contradicts it is refused.
    ({**CLASSIFY, "init_from": "{narrow}", "d_model": 64}, "differs in d_model"),
    ({**CLASSIFY, "init_from": "{encoder}", "data": "{one_label}"}, "at least 2 classes"),
    ({**CLASSIFY, "init_from": "{encoder}", "data": "{three_labels}", "num_classes": 2},
     "--num_classes=2"),
    ({**CLASSIFY, "init_from": "{encoder}"}, "no checkpoints/ directory"),
    ({**BERT, "objective": "mlm", "tokenizer": "{plain}"}, "--bert_symbols"),
    ({**T5, "objective": "span", "tokenizer": "{bert}"}, "--sentinels"),
    ({**T5, "objective": "span", "tokenizer": "{t5}", "vocab_size": None, "target_len": 4},
     "needs decoder rows"),
    ({**T5, "objective": "seq2seq", "data": "{no_target}"}, 'no field "target"'),
    ({**BERT, "objective": "mlm", "mask_rate": 0.0}, "--mask_rate"),
    ({**T5, "objective": "seq2seq", "label_smoothing": 1.0}, "--label_smoothing"),
    ({"objective": "distill"}, "--objective=distill needs --teacher=PATH"),
    ({"objective": "rlhf"}, "unknown --objective"),
]


@pytest.mark.parametrize("flags,message", CASES)
def test_bad_combination_is_one_line_and_writes_nothing(tmp_path, paths, flags, message):
    flags = {k: v.format(**paths) if isinstance(v, str) else v for k, v in flags.items()}
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as error:
        train(SMALL.replace(workdir=str(workdir), **flags))
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert not workdir.exists()


@pytest.mark.parametrize("args,message", [
    (["--preset=tiny", "--objective=mlm"], "trains the encoder family"),
    (["--preset=tiny_bert", "--objective=classify"], "--init_from=WORKDIR"),
])
def test_command_line_exits_2_with_one_line(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "train", f"--workdir={workdir}", *args],
                            capture_output=True, text=True, check=False, timeout=120,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and message in lines[0]
    assert not workdir.exists()
