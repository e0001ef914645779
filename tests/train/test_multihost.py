"""Two processes x 4 fake CPU devices (python -m train.launch_local) train what one process with
8 devices trains: the same losses per step, the same checkpoints, which each restores exactly,
and a checkpoint of either resumes in the other with its place in the data; each process reads
only its own shard of the data.

Both runs split the data into --data_shards=2 (data/shards.py): the two processes read one
shard each, the single process reads both, and the global batches are the same.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data.corpus import load_corpus
from data.options import StreamOptions
from data.pipeline import packed_dataset
from data.prepared_dataset import PreparedCorpus
from data.sentencepiece_tokenizer import load_tokenizer, train_tokenizer
from model import sharding
from model.config import ModelConfig
from model.family import build_model
from train.checkpoint import Checkpointer
from train.flags import TrainConfig
from train.loop import train
from train.optimizer import make_optimizer
from train.state import abstract_state
from train.tasks import get_task

STEPS = 6
FLAGS = {"preset": "tiny", "vocab_size": 512, "seq_len": 32, "batch_size": 8, "steps": STEPS,
         "log_every": 1, "eval_every": STEPS, "eval_batches": 3, "save_every": 3,
         "warmup_steps": 2, "learning_rate": 3e-3, "eval_fraction": 0.1, "data_shards": 2}
# Two hosts, each a 2x2 block (data x tensor); --dcn_mesh lays the hosts along data: the same
# data=4 x tensor=2 mesh the single process builds from its 8 devices.
TWO_HOSTS = ["--mesh=data=2,tensor=2", "--dcn_mesh=data=2"]
ONE_HOST = "data=4,tensor=2"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A corpus of 64 documents that each start with their number, and a tokenizer for it."""
    root = tmp_path_factory.mktemp("inputs")
    sources = sorted(p for p in os.listdir(os.path.dirname(os.__file__)) if p.endswith(".py"))
    for i, name in enumerate(sources[:64]):
        with open(os.path.join(os.path.dirname(os.__file__), name), encoding="utf-8") as f:
            (root / f"doc{i:02d}.txt").write_text(f"# document {i:02d}\n{f.read()[:2500]}")
    corpus = str(root / "doc*.txt")
    train_tokenizer(load_corpus(corpus).train, 512, str(root / "tok.model"))
    return {"data": corpus, "tokenizer": str(root / "tok.model")}


def _args(inputs, workdir, **changes) -> list[str]:
    flags = {**FLAGS, **inputs, "workdir": workdir, **changes}
    return [f"--{k}={v}" for k, v in flags.items()]


def _launch(output_dir, *args) -> subprocess.CompletedProcess:
    """python -m train.launch_local: 2 processes x 4 devices; process 1's output in output_dir."""
    return subprocess.run([sys.executable, "-m", "train.launch_local", "--num_processes=2",
                           "--devices_per_process=4", f"--output_dir={output_dir}", "--", *args],
                          capture_output=True, text=True, timeout=400, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _train_one(inputs, workdir, **changes) -> None:
    """`train` in this process: 8 devices, the data shards of both hosts."""
    train(TrainConfig(**{**FLAGS, **inputs, "workdir": str(workdir), "mesh": ONE_HOST,
                         **changes}))


def _metrics(workdir) -> dict[int, dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def _restore(workdir, step: int, mesh: str = "data=8"):
    """(state on the host, data item) of checkpoint `step`, restored onto this process's mesh."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    cfg = TrainConfig(**config["flags"])
    model = build_model(ModelConfig.from_dict(config["model"]))
    abstract, _ = abstract_state(model, make_optimizer(cfg)[0], cfg.seed, sharding.make_mesh(mesh))
    checkpointer = Checkpointer(workdir)
    try:
        state, data, _ = checkpointer.restore(step, abstract)
    finally:
        checkpointer.close()
    return jax.device_get(state), data


def _assert_close(a, b, atol: float) -> None:
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """The same training, in 2 processes x 4 devices and in 1 process x 8 devices."""
    root = tmp_path_factory.mktemp("runs")
    two = _launch(root / "logs", *_args(inputs, root / "two"), *TWO_HOSTS)
    assert two.returncode == 0, two.stderr[-3000:]
    _train_one(inputs, root / "one")
    return {"two": root / "two", "one": root / "one", "stdout": two.stdout, "root": root}


def test_two_processes_log_the_losses_of_one(runs):
    two, one = _metrics(runs["two"]), _metrics(runs["one"])
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))  # process 0 alone writes
    for step in two:
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-5), step
        assert two[step]["grad_norm"] == pytest.approx(one[step]["grad_norm"], rel=1e-4), step
    assert two[STEPS]["eval_loss"] == pytest.approx(one[STEPS]["eval_loss"], abs=1e-5)
    assert two[STEPS]["eval_tokens"] == one[STEPS]["eval_tokens"]
    assert two[1]["loss"] - two[STEPS]["loss"] > 0.1  # it trains
    assert runs["stdout"].count(f"step {STEPS}/{STEPS}") == 1  # one console, process 0's
    assert "--process_id" not in (runs["two"] / "flags.txt").read_text()


def test_checkpoint_of_two_processes_restores_in_one(runs):
    for step in (3, STEPS):
        state_two, data_two = _restore(runs["two"], step)
        state_one, data_one = _restore(runs["one"], step)
        _assert_close(state_two["params"], state_one["params"], atol=1e-6)
        _assert_close(state_two["opt_state"], state_one["opt_state"], atol=1e-6)
        assert int(state_two["step"]) == step
        # The place in each shard, whichever processes read it.
        assert data_two == data_one and data_two["data_shards"] == 2
        # Each shard's own stream: windows of token shards, `step` batches read from each.
        assert data_two["shards"] == [{"next_index": step}] * 2


def _continue(inputs, processes: str, workdir, steps: int) -> None:
    """Resumes the run in `workdir` up to `steps` in "one" process or "two"."""
    if processes == "one":
        _train_one(inputs, workdir, steps=steps)
        return
    result = _launch(workdir.parent / "logs", *_args(inputs, workdir, steps=steps), *TWO_HOSTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints/" in result.stdout
    assert "data stream starts over" not in result.stderr


@pytest.mark.parametrize("writer,resumer", [("one", "two"), ("two", "one")])
def test_checkpoint_resumes_on_the_other_process_count(runs, inputs, writer, resumer):
    """A run resumed on the other number of processes takes one more step exactly as the
    processes that wrote it would have: state and place in the data both carry over."""
    resumed = runs["root"] / f"{writer}_in_{resumer}"
    reference = runs["root"] / f"{writer}_continued"
    shutil.copytree(runs[writer], resumed)
    shutil.copytree(runs[writer], reference)
    step = STEPS + 1
    _continue(inputs, resumer, resumed, step)
    _continue(inputs, writer, reference, step)
    assert _metrics(resumed)[step]["loss"] == pytest.approx(_metrics(reference)[step]["loss"],
                                                            abs=1e-5)
    _assert_close(_restore(resumed, step)[0]["params"], _restore(reference, step)[0]["params"],
                  atol=1e-6)


def test_another_data_split_restarts_the_data_and_says_so(runs, inputs, capsys):
    """Resumed with one data shard, the run written with two keeps its state (step, params) but
    starts the data over, and says how to continue it instead."""
    workdir = runs["root"] / "one_shard"
    shutil.copytree(runs["one"], workdir)
    _train_one(inputs, workdir, steps=STEPS + 1, data_shards=0)
    err = capsys.readouterr().err
    assert "written with 2 data shard(s) and this run reads 1" in err
    assert "--data_shards=2 would continue it" in err
    assert sorted(_metrics(workdir)) == list(range(1, STEPS + 2))


def test_seq2seq_with_bleu_over_an_overwritten_run(runs, inputs):
    """Two processes start a seq2seq run over an earlier (causal-LM) run with --overwrite, and
    evaluate BLEU by decoding together: the losses, held-out loss and BLEU of one process."""
    seq2seq = {"preset": "tiny_t5", "objective": "seq2seq", "data": "stdlib", "tokenizer": "",
               "steps": 4, "eval_every": 4, "eval_batches": 2, "bleu_examples": 4,
               "warmup_steps": 1, "overwrite": True}
    two = runs["root"] / "seq2seq_two"
    shutil.copytree(runs["one"], two)
    result = _launch(runs["root"] / "logs", *_args(inputs, two, **seq2seq), *TWO_HOSTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (two / "checkpoints" / str(STEPS)).exists()  # the earlier run is gone
    one = runs["root"] / "seq2seq_one"
    _train_one(inputs, one, **seq2seq)
    two, one = _metrics(two), _metrics(one)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    for step in two:
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-5), step
    assert two[4]["eval_loss"] == pytest.approx(one[4]["eval_loss"], abs=1e-5)
    assert two[4]["bleu"] == pytest.approx(one[4]["bleu"], abs=1e-6)


def test_one_process_reads_the_global_batches_of_two(inputs):
    """The train stream with --data_shards=2: one process's batches are, row for row, host 0's
    rows then host 1's."""
    cfg = TrainConfig(**{**FLAGS, **inputs, "workdir": "unused"})
    task = get_task("clm")
    tokenizer = load_tokenizer(inputs["tokenizer"])
    data = task.load_data(cfg).tokenize(tokenizer)  # raw files: into temporary token shards
    assert isinstance(data, PreparedCorpus)
    one = iter(task.dataset(cfg, data, tokenizer, "train"))
    hosts = [iter(task.dataset(cfg, data, tokenizer, "train", i, 2)) for i in range(2)]
    for _ in range(3):
        together = [next(h) for h in hosts]
        batch = next(one)
        for key, rows in batch.items():
            assert rows.shape[0] == cfg.batch_size
            np.testing.assert_array_equal(rows, np.concatenate([t[key] for t in together]))
    # Without --data_shards, one process reads the data as one shard: other batches.
    single = next(iter(task.dataset(cfg.replace(data_shards=0), data, tokenizer, "train")))
    assert not np.array_equal(single["tokens"], next(iter(
        task.dataset(cfg, data, tokenizer, "train")))["tokens"])


def test_each_process_reads_only_its_shard(inputs):
    """One epoch of the training pipeline (shuffled, not repeated) for host 0 and host 1 of 2:
    disjoint documents that together are the single-process epoch's, each seen once."""
    texts = load_corpus(inputs["data"]).train
    tokenizer = load_tokenizer(inputs["tokenizer"])

    def documents(index: int, count: int) -> list[int]:
        options = StreamOptions(batch_size=4 // count, seed=0, repeat=False, shard_index=index,
                                shard_count=count)
        stream = packed_dataset(texts, tokenizer, options, length=33)
        text = "".join(tokenizer.decode(row) for batch in stream for row in batch["tokens"])
        return [int(n) for n in re.findall(r"# document (\d+)\n", text)]

    host0, host1, single = documents(0, 2), documents(1, 2), documents(0, 1)
    assert len(single) == len(texts) == len(set(single))
    assert len(host0) == len(set(host0)) and len(host1) == len(set(host1))
    assert not set(host0) & set(host1)
    assert sorted(host0 + host1) == sorted(single)


@pytest.mark.parametrize("args,message", [
    (["--dcn_mesh=data=2"], "--dcn_mesh='data=2' uses 2 hosts but there are 1"),
    (["--coordinator_address=localhost:1234"], "also needs --num_processes and --process_id"),
    (["--distributed=false", "--process_id=1"], "--distributed=false contradicts"),
])
def test_bad_multihost_flags_are_one_line_exit_2(inputs, tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "train", *_args(inputs, tmp_path / "w"),
                             *args], capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "w").exists()


def test_a_mesh_that_does_not_split_the_batch_across_hosts_is_refused(inputs, tmp_path):
    result = _launch(tmp_path, *_args(inputs, tmp_path / "w"), "--mesh=data=4",
                     "--dcn_mesh=tensor=2")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "does not split the batch across hosts" in lines[0]
    assert not (tmp_path / "w").exists()
