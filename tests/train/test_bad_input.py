"""The error contract of `python -m train` (DESIGN.md §8) in one table: every bad input exits with
code 2, prints exactly one stderr line "error: ..." that names the problem, and writes nothing: a
trained workdir it targets keeps every file's bytes and mtime, a new workdir is never created, and
no temp files are left behind. Also the workdir ownership rules: a workdir holding another run is
refused unless --overwrite, which discards only that run's files and starts fresh.

Each case is a real subprocess (flag parsing, the absl entry point and all), as a user runs it."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TINY = ["--preset=tiny", "--vocab_size=512", "--seq_len=32", "--batch_size=8", "--steps=2",
        "--save_every=2", "--eval_every=0", "--log_every=1"]


# Where a small or read-only tmpfs cannot be mounted (no privileges, as in CI), `python -m train`
# runs under this launcher instead: the OS calls the run asks answer as such a mount would, for
# paths under one directory. "full": statvfs reports a 64 KiB filesystem; "read_only": access()
# refuses writing (root too, like a read-only mount). A run that skipped its check would then
# create or change files there, which the test sees.
_FAULT_LAUNCHER = """
import os, runpy, sys
mode, root = sys.argv[1], os.path.realpath(sys.argv[2])
sys.argv = ["train", *sys.argv[3:]]

def inside(path):
    if isinstance(path, int):  # a file descriptor
        return False
    path = os.path.realpath(os.fsdecode(path))
    return path == root or path.startswith(root + os.sep)

if mode == "full":
    real_statvfs = os.statvfs
    def statvfs(path):
        st = real_statvfs(path)
        if not inside(path):
            return st
        return os.statvfs_result((4096, 4096, 16, 16, 16, st.f_files, st.f_ffree, st.f_favail,
                                  st.f_flag, st.f_namemax))
    os.statvfs = statvfs
else:
    real_access = os.access
    def access(path, mode, **kwargs):
        if mode & os.W_OK and inside(path):
            return False
        return real_access(path, mode, **kwargs)
    os.access = access
runpy.run_module("train", run_name="__main__", alter_sys=True)
"""


def _train(*args: str, tmpdir: str | None = None,
           fault: tuple[str, Path] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true"}
    if tmpdir:  # a private TMPDIR, to prove a refused run leaves no temp files either
        env["TMPDIR"] = tmpdir
    launch = ["-m", "train"] if fault is None else ["-c", _FAULT_LAUNCHER, fault[0], str(fault[1])]
    return subprocess.run([sys.executable, *launch, *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False, timeout=300, env=env)


def _snapshot(root) -> dict[str, tuple]:
    """Every file's bytes and mtime and every directory's listing and mtime under `root`."""
    out = {}
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        out[rel + "/"] = (sorted(dirs + files), os.stat(directory).st_mtime_ns)
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.join(rel, name)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def _changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _mount_tmpfs(path, size: str) -> bool:
    """Mounts a small tmpfs at `path` (needs privileges); False where that is not allowed."""
    os.makedirs(path, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, check=False)
    return result.returncode == 0


def _umount(path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


def _write_inputs(files: Path) -> None:
    """Input files of every kind, good and bad, a 400-piece tokenizer, and a pretrained run
    without its checkpoint."""
    from data.sentencepiece_tokenizer import train_tokenizer
    from model.config import get_preset

    files.mkdir()
    sources = [os.__file__, json.__file__, shutil.__file__, subprocess.__file__]
    text = "".join(Path(p).read_text(encoding="utf-8") for p in sources)
    (files / "train.txt").write_text(text)
    (files / "other.txt").write_text(Path(json.__file__).read_text(encoding="utf-8"))
    (files / "empty.txt").write_text("")
    (files / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (files / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 50)
    (files / "no_text.jsonl").write_text("".join(json.dumps({"body": f"x = {i}"}) + "\n"
                                                 for i in range(20)))
    (files / "no_target.jsonl").write_text("".join(json.dumps({"source": f"x = {i}",
                                                               "text": "y"}) + "\n"
                                                   for i in range(20)))
    (files / "bad.json").write_text('{"version": "1.0", "model": ')
    (files / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (files / "a_file").write_text("not a directory")
    train_tokenizer([text], 400, str(files / "tok400.model"))
    # A pretrained run that --init_from accepts up to its checkpoint, which is missing.
    (files / "no_checkpoint").mkdir()
    model = get_preset("tiny").replace(vocab_size=512)
    (files / "no_checkpoint/config.json").write_text(json.dumps({"model": model.to_dict()}))
    train_tokenizer([text], 512, str(files / "no_checkpoint/tokenizer.model"))


def _train_workdir(files: Path, workdir: Path) -> Path:
    result = _train(*TINY, f"--data={files}/train.txt", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    return workdir


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The input files (and a snapshot of them), a pool that runs the subprocesses two or three
    at a time (each spends seconds importing JAX), and one small trained workdir, trained in that
    pool while the cases that don't need it run."""
    root = tmp_path_factory.mktemp("bad_input")
    _write_inputs(root / "files")
    with ThreadPoolExecutor(max_workers=3) as pool:
        yield {"root": root, "files": root / "files", "files_before": _snapshot(root / "files"),
               "pool": pool, "trained": pool.submit(_train_workdir, root / "files",
                                                    root / "trained")}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    workdir: str
    args: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.name


# (id, what the workdir is, extra flags, a distinctive part of the one error line). Workdirs:
# "new" does not exist and must not be created; "trained" is a copy of a trained run; "no_config"
# that copy without config.json; "bad_config" with a truncated config.json; "read_only" a copy on
# a read-only mount; "full" a new workdir on a nearly full filesystem. {files} and {run} expand.
_TABLE = [
    ("unknown flag", "new", ["--batchsize=8"], "Unknown command line flag 'batchsize'"),
    ("malformed int", "new", ["--steps=abc"], "--steps=abc"),
    ("wrong type", "new", ["--learning_rate=fast"], "--learning_rate=fast"),
    ("flagfile missing", "new", ["--flagfile={files}/missing.flags"], "missing.flags"),
    ("positional argument", "new", ["go"], "unexpected arguments ['go']"),
    ("negative batch", "new", ["--batch_size=-8"], "--batch_size must be a positive integer"),
    ("negative width", "new", ["--d_model=-1"], "--d_model must be a positive integer"),
    ("zero steps", "new", ["--steps=0"], "--steps must be a positive integer"),
    ("seq_len 1", "new", ["--seq_len=1"], "--seq_len must be at least 2"),
    ("batch vs mesh", "new", ["--mesh=data=8", "--batch_size=12"], "must be divisible by"),
    ("batch vs data shards", "new", ["--data_shards=3"],
     "--batch_size=8 must be divisible by --data_shards=3"),
    ("negative data shards", "new", ["--data_shards=-1"], "--data_shards must not be negative"),
    ("bad mesh", "new", ["--mesh=data:8"], "--mesh='data:8'"),
    ("unknown preset", "new", ["--preset=gpt5"], "unknown preset"),
    ("unknown objective", "new", ["--objective=rlhf"], "unknown --objective='rlhf'"),
    ("unknown optimizer", "new", ["--optimizer=lion"], "lion"),
    ("missing data", "new", ["--data={files}/nope.txt"], "does not exist"),
    ("empty data", "new", ["--data={files}/empty.txt"], "no non-empty documents"),
    ("binary data", "new", ["--data={files}/binary.txt"], "looks binary"),
    ("non-UTF-8 data", "new", ["--data={files}/latin1.txt"], "not valid UTF-8"),
    ("not parquet", "new", ["--data={files}/bad.parquet"], "bad.parquet"),
    ("lm jsonl without text", "new", ["--data={files}/no_text.jsonl"], 'field "text"'),
    ("seq2seq jsonl without target", "new",
     ["--preset=tiny_t5", "--objective=seq2seq", "--data={files}/no_target.jsonl"],
     'no field "target"'),
    ("vocab too small to train", "new", ["--vocab_size=100"], "vocab_size=100 is too small"),
    ("vocab below tokenizer", "new", ["--vocab_size=300", "--tokenizer={files}/tok400.model"],
     "smaller than the tokenizer's 400"),
    ("tokenizer not sentencepiece", "new", ["--tokenizer={files}/train.txt"],
     "not a SentencePiece model"),
    ("tokenizer json broken", "new", ["--tokenizer={files}/bad.json"], "bad.json"),
    ("init_from nowhere", "new",
     ["--preset=tiny_bert", "--objective=classify", "--init_from={files}/nowhere"],
     "nowhere does not exist"),
    ("classify without init_from", "new", ["--preset=tiny_bert", "--objective=classify"],
     "pass --init_from=WORKDIR"),
    ("workdir is a file", "new", ["--workdir={files}/a_file"], "is a file"),
    ("workdir below a file", "new", ["--workdir={files}/a_file/run"], "is below the file"),
    ("disk full", "full", [], "MiB free, but a checkpoint of this model needs"),
    ("other tokenizer on resume", "trained", ["--tokenizer={files}/tok400.model"],
     "tok400.model (400 pieces) is not the tokenizer of the run in --workdir"),
    ("shapes differ on resume", "trained", ["--d_model=128"],
     "holds a run of a different model (differs in d_model"),
    ("shapes and data differ on resume", "trained", ["--d_model=128", "--data={files}/other.txt"],
     "holds a run of a different model"),  # and no warning about the data before it
    ("bad data with --overwrite", "trained",
     ["--d_model=128", "--overwrite", "--data={files}/nope.txt"], "does not exist"),
    ("--overwrite of --init_from", "trained", ["--overwrite", "--init_from={run}"],
     "--overwrite would delete --init_from"),
    ("--overwrite of --tokenizer", "trained", ["--overwrite", "--tokenizer={run}/tokenizer.model"],
     "--overwrite would delete --tokenizer"),
    ("--overwrite with a bad --init_from", "trained",
     ["--overwrite", "--init_from={files}/no_checkpoint"], "no checkpoints/ directory"),
    ("checkpoints without config.json", "no_config", [], "but no config.json"),
    ("config.json truncated", "bad_config", [], "config.json is unreadable"),
    ("read-only workdir", "read_only", [], "not writable"),
]
CASES = [Case(name, workdir, tuple(args), message) for name, workdir, args, message in _TABLE]


@dataclasses.dataclass
class Outcome:
    result: subprocess.CompletedProcess | None = None
    changed: list[str] = dataclasses.field(default_factory=list)  # under the case's directory
    temp_left: list[str] = dataclasses.field(default_factory=list)
    created: bool = False  # whether a workdir that did not exist was created


def _run_case(case: Case, base: dict, directory: Path) -> Outcome:
    """Sets up the case's workdir under `directory`, runs it, and records what changed."""
    work, temp = directory / "case", directory / "tmp"
    work.mkdir(parents=True)
    temp.mkdir()
    run, mounted, locked, fault = work / "run", None, [], None
    try:
        if case.workdir == "full":
            run = work / "small_disk" / "run"
            if _mount_tmpfs(run.parent, "64k"):
                mounted = run.parent
            else:
                fault = ("full", run.parent)
        elif case.workdir == "read_only":
            run = work / "ro" / "run"
            if _mount_tmpfs(run.parent, "16m"):  # read-only for root too
                mounted = run.parent
                shutil.copytree(base["trained"].result(), run)
                subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
            elif os.geteuid() != 0:
                shutil.copytree(base["trained"].result(), run)
                locked = [run, run / "checkpoints"]
                for path in locked:
                    path.chmod(0o555)
            else:  # a chmod'ed directory does not stop root
                shutil.copytree(base["trained"].result(), run)
                fault = ("read_only", run.parent)
        elif case.workdir != "new":
            shutil.copytree(base["trained"].result(), run)
            if case.workdir == "no_config":
                os.remove(run / "config.json")
            elif case.workdir == "bad_config":
                config = (run / "config.json").read_bytes()
                (run / "config.json").write_bytes(config[: len(config) // 2])
        args = [a.format(files=base["files"], run=run) for a in case.args]
        if not any(a.startswith("--workdir=") for a in args):
            args.append(f"--workdir={run}")
        before = _snapshot(work)
        result = _train(*TINY, f"--data={base['files']}/train.txt", *args, tmpdir=str(temp),
                        fault=fault)
        return Outcome(result=result, changed=_changed(before, _snapshot(work)),
                       temp_left=os.listdir(temp),
                       created=case.workdir in ("new", "full") and run.exists())
    finally:
        if mounted is not None:
            _umount(mounted)
        for path in locked:  # so that pytest can remove it
            path.chmod(0o755)


@pytest.fixture(scope="module")
def outcomes(request, base):
    """Starts every selected case at once (the pool runs a few at a time); each test then waits
    for its own."""
    params = [getattr(item, "callspec", None) for item in request.session.items]
    selected = [p.params["case"] for p in params
                if p is not None and isinstance(p.params.get("case"), Case)]
    return {case.name: base["pool"].submit(_run_case, case, base, base["root"] / f"case{i}")
            for i, case in enumerate(selected)}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(base, outcomes, case):
    outcome = outcomes[case.name].result()
    result = outcome.result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    assert lines[0].startswith("error: ") and case.message in lines[0], lines[0]
    assert outcome.changed == []  # every file's bytes and mtime, every directory's listing
    assert not outcome.created
    assert outcome.temp_left == []  # e.g. no tokenizer trained for a refused run
    assert _changed(base["files_before"], _snapshot(base["files"])) == []


def test_overwrite_deletes_only_the_earlier_runs_files_and_starts_fresh(base, tmp_path):
    """Without --overwrite a different model is refused ("shapes differ on resume" above proves
    that leaves the workdir byte-identical); with it the earlier run's files go, the user's stay,
    and the new run trains from step 1."""
    run = tmp_path / "run"
    shutil.copytree(base["trained"].result(), run)
    (run / "notes.txt").write_text("the user's own file")
    old_events = {name for name in os.listdir(run) if name.startswith("events.out.tfevents")}
    old_config = json.loads((run / "config.json").read_text())
    old_shapes = (run / "checkpoints/2/state/_METADATA").read_bytes()

    result = _train(*TINY, f"--data={base['files']}/train.txt", "--d_model=128", "--overwrite",
                    f"--workdir={run}")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" not in result.stdout and "step 2/2" in result.stdout
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert old_events and not old_events & set(os.listdir(run))  # the earlier run's are gone
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["d_model"] == 128 and old_config["model"]["d_model"] == 64
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # not the earlier run's lines followed by this one's
    assert sorted(os.listdir(run / "checkpoints")) == ["2"]
    assert (run / "checkpoints/2/state/_METADATA").read_bytes() != old_shapes
    # A rerun of flags.txt resumes this run rather than deleting it again.
    assert "--nooverwrite" in (run / "flags.txt").read_text().splitlines()
