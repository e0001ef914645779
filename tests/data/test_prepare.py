"""python -m data.prepare: shards equal on-the-fly tokenization, do not depend on the worker
count, survive a SIGKILL and rerun byte for byte, and every bad input is refused unchanged."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from data.corpus import load_corpus
from data.options import StreamOptions
from data.prepare_job import prepare_corpus
from data.prepared_dataset import load_prepared, prepared_dataset
from data.sentencepiece_tokenizer import load_tokenizer, train_tokenizer
from data.token_shards import SplitReader, read_manifest
from runtime.errors import UserError
from tests.data.generated_corpus import VOCAB, documents_in_order, write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVAL = 0.1
SHARD_MB = 0.004  # ~4 KB of input a shard: several shards from the small corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared") / "out")
    prepare_corpus(corpus, out, vocab_size=VOCAB, eval_fraction=EVAL, shard_mb=SHARD_MB)
    return out


def _files(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def _command(*args, env=None):
    return subprocess.run([sys.executable, "-m", "data.prepare", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def test_shards_equal_on_the_fly_tokenization(corpus, prepared):
    manifest = read_manifest(prepared)
    assert len(manifest["shards"]) > 3 and manifest["dtype"] == "uint16"
    tokenizer = load_tokenizer(os.path.join(prepared, "tokenizer.model"))
    docs = documents_in_order(corpus)
    raw = load_corpus(",".join(os.path.join(corpus, n) for n in sorted(os.listdir(corpus))
                               if not n.endswith(".gz")), EVAL)
    for split in ("train", "eval"):
        reader = SplitReader(prepared, manifest, split)
        held_out = {d for d in docs if d in raw.eval} if split == "eval" else None
        expected = [d for d in docs if (d in held_out if held_out is not None
                                        else d not in set(raw.eval))]
        if split == "eval":  # the split is load_corpus's, by hash
            assert [d for d in expected if d in raw.eval] == raw.eval
        assert reader.num_documents == len(expected) == manifest["num_documents"][split]
        for i, doc in enumerate(expected):
            want = np.append(tokenizer.encode(doc), tokenizer.eos_id)
            np.testing.assert_array_equal(reader.document(i), want)


def test_trained_tokenizer_is_the_one_training_makes(corpus, prepared, tmp_path):
    # The same documents (the .gz is the prepare-only format) train the same pieces.
    spec = ",".join(os.path.join(corpus, n) for n in sorted(os.listdir(corpus)))
    docs = documents_in_order(corpus)
    raw = load_corpus(",".join(p for p in spec.split(",") if not p.endswith(".gz")), EVAL)
    train_docs = [d for d in docs if d not in set(raw.eval)]
    ours = train_tokenizer(train_docs, VOCAB, str(tmp_path / "t.model"))
    with open(ours.path, "rb") as a, open(os.path.join(prepared, "tokenizer.model"), "rb") as b:
        assert a.read() == b.read()


def test_one_and_two_workers_are_byte_identical(corpus, prepared, tmp_path):
    out = str(tmp_path / "two")
    prepare_corpus(corpus, out, tokenizer=os.path.join(prepared, "tokenizer.model"),
                   eval_fraction=EVAL, shard_mb=SHARD_MB, num_workers=2)
    one, two = _files(prepared), _files(out)
    shard_names = [n for n in one if n.endswith((".tokens", ".npy"))]
    assert shard_names and all(one[n] == two[n] for n in shard_names)
    assert set(one) == set(two)


# python -m data.prepare in a child that SIGKILLs itself at a chosen moment: right after
# progress.json records its 2nd shard ("after"), or after the first document of shard 1 is
# written ("in_shard"). The job is patched here, in the child, so the product has no test hook.
_KILLED_CHILD = """
import os, runpy, signal, sys
from data import token_shards
mode = sys.argv.pop(1)
if mode == "after":
    write = token_shards.write_progress
    def write_then_die(directory, progress):
        write(directory, progress)
        if len(progress["done"]) >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
    token_shards.write_progress = write_then_die
else:
    add = token_shards.SplitWriter.add
    def add_then_die(self, tokens):
        add(self, tokens)
        if self.names[0].endswith("-00001.tokens"):
            os.kill(os.getpid(), signal.SIGKILL)
    token_shards.SplitWriter.add = add_then_die
sys.argv[0] = "data.prepare"
runpy.run_module("data.prepare", run_name="__main__", alter_sys=True)
"""


def _killed(mode, *args):
    return subprocess.run([sys.executable, "-c", _KILLED_CHILD, mode, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_killed_and_rerun_equals_an_uninterrupted_run(corpus, prepared, tmp_path):
    out = str(tmp_path / "killed")
    args = [f"--data={corpus}", f"--out={out}", f"--vocab_size={VOCAB}",
            f"--eval_fraction={EVAL}", f"--shard_mb={SHARD_MB}"]
    killed = _killed("after", *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert os.path.exists(os.path.join(out, "progress.json"))
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    rerun = _command(*args, "--num_workers=2")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _files(out) == _files(prepared)
    again = _command(*args)  # a finished preparation: rerunning changes nothing
    assert again.returncode == 0 and _files(out) == _files(prepared)


def test_killed_while_writing_a_shard_leaves_no_shard_under_its_name(corpus, prepared, tmp_path):
    out = str(tmp_path / "killed")
    args = [f"--data={corpus}", f"--out={out}", f"--vocab_size={VOCAB}",
            f"--eval_fraction={EVAL}", f"--shard_mb={SHARD_MB}"]
    killed = _killed("in_shard", *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    names = os.listdir(out)
    assert "train-00000.tokens" in names and "train-00001.tokens" not in names
    assert any(n.startswith("train-00001.tokens.tmp") for n in names)
    rerun = _command(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _files(out) == _files(prepared)


def test_host_shares_are_disjoint_and_cover_the_split(prepared):
    corpus = load_prepared(prepared)
    reader, length = corpus.reader("train"), 17
    windows = reader.num_tokens // length
    every = {reader.window(w * length, length)[0].tobytes() for w in range(windows)}
    seen = []
    for index in range(2):
        share = len(range(index, windows, 2))
        ds = prepared_dataset(corpus, "train", StreamOptions(batch_size=1, seed=3, shard_index=index,
                                                             shard_count=2), length=length)
        it = iter(ds)
        seen += [next(it)["tokens"][0].astype(np.int32).tobytes() for _ in range(share)]
    assert len(seen) == len(set(seen)) == windows and set(seen) == every


def test_rows_restart_segments_at_documents(prepared):
    corpus = load_prepared(prepared)
    eos = corpus.manifest["eos_id"]
    ds = prepared_dataset(corpus, "eval", StreamOptions(batch_size=4, seed=0, shuffle=False,
                                                        repeat=False), length=33)
    batches = list(ds)
    total = sum(int((b["segment_ids"] != 0).sum()) for b in batches)
    assert total == corpus.reader("eval").num_tokens
    row = {k: v[0] for k, v in batches[0].items()}
    after_eos = np.flatnonzero(row["tokens"][:-1] == eos) + 1
    assert len(after_eos) and all(row["positions"][i] == 0 for i in after_eos)
    assert all(row["segment_ids"][i] == row["segment_ids"][i - 1] + 1 for i in after_eos)


def _refused(call, directory):
    before = _files(directory) if os.path.isdir(directory) else None
    with pytest.raises(UserError) as info:
        call()
    assert (_files(directory) if os.path.isdir(directory) else None) == before
    return str(info.value)


def _damaged_copy(prepared, tmp_path, damage):
    out = tmp_path / "damaged"
    out.mkdir(parents=True)
    for name, data in _files(prepared).items():
        (out / name).write_bytes(damage(name, data))
    return str(out)


def test_bit_flip_truncation_and_missing_shard_are_refused(prepared, tmp_path):
    flip = _damaged_copy(prepared, tmp_path / "a", lambda n, d: (
        d[:9] + bytes([d[9] ^ 1]) + d[10:] if n == "train-00001.tokens" else d))
    assert "checksum" in _refused(lambda: load_prepared(flip), flip)
    cut = _damaged_copy(prepared, tmp_path / "b", lambda n, d: d[:-2] if n.endswith(
        "00002.tokens") else d)
    assert "truncated" in _refused(lambda: read_manifest(cut, checksums=False), cut)
    gone = _damaged_copy(prepared, tmp_path / "c", lambda n, d: d)
    os.remove(os.path.join(gone, "eval-00000.docs.npy"))
    assert "lacks" in _refused(lambda: load_prepared(gone), gone)


def test_out_holding_other_files_and_empty_corpus_are_refused(corpus, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    message = _refused(lambda: prepare_corpus(corpus, str(other), vocab_size=VOCAB), str(other))
    assert "not prepared data" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.jsonl").write_text('{"text": "  "}\n\n')
    out = str(tmp_path / "out")
    result = _command(f"--data={empty}", f"--out={out}", "--tokenizer="
                      + str(tmp_path / "none.model"))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error:")
    for flags in ([f"--vocab_size={VOCAB}"], []):
        result = _command(f"--data={empty}", f"--out={out}", *flags)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and lines[-1].startswith("error: "), result.stderr[-1000:]
        assert not os.path.exists(out)
    result = _command(f"--data={corpus}", f"--out={out}", "--bert_symbols",
                      f"--tokenizer={tmp_path / 'none.model'}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "--bert_symbols/--sentinels" in lines[-1], lines[-2:]
    assert not os.path.exists(out)


def test_compressed_files_read_as_their_plain_text(corpus, prepared, tmp_path):
    zstandard = pytest.importorskip("zstandard")
    import gzip

    with open(os.path.join(corpus, "a.jsonl"), "rb") as f:
        raw = f.read()
    outs = {}
    for suffix, compress in ((".jsonl", bytes), (".jsonl.gz", gzip.compress),
                             (".jsonl.zst", zstandard.ZstdCompressor().compress)):
        source = tmp_path / f"src{suffix.replace('.', '_')}" / f"a{suffix}"
        source.parent.mkdir()
        source.write_bytes(compress(raw))
        outs[suffix] = str(tmp_path / f"out{suffix.replace('.', '_')}")
        prepare_corpus(str(source), outs[suffix], eval_fraction=EVAL, shard_mb=1.0,
                       tokenizer=os.path.join(prepared, "tokenizer.model"))
    shards = [{k: v for k, v in _files(out).items() if k.endswith((".tokens", ".npy"))}
              for out in outs.values()]
    assert shards[0] and shards[1] == shards[0] and shards[2] == shards[0]


def test_saved_datasets_directory_reads_as_the_same_documents(corpus, prepared, tmp_path):
    import json

    import pyarrow as pa

    with open(os.path.join(corpus, "a.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    saved = tmp_path / "saved"  # the layout Dataset.save_to_disk writes
    saved.mkdir()
    schema = pa.schema([("text", pa.string())])
    with pa.OSFile(str(saved / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, schema) as writer:
        for i in range(0, len(texts), 50):
            writer.write_batch(pa.record_batch([pa.array(texts[i:i + 50])], schema=schema))
    (saved / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": None}))
    (saved / "dataset_info.json").write_text("{}")
    outs = []
    for i, source in enumerate((str(saved), os.path.join(corpus, "a.jsonl"))):
        outs.append(str(tmp_path / f"out{i}"))
        prepare_corpus(source, outs[-1], eval_fraction=EVAL, shard_mb=1.0,
                       tokenizer=os.path.join(prepared, "tokenizer.model"))
    arrow, jsonl = ({k: v for k, v in _files(out).items() if k.endswith((".tokens", ".npy"))}
                    for out in outs)
    assert arrow and arrow == jsonl
