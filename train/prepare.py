"""Resolves a run before anything is written: flags -> task, model config, mesh, data, tokenizer,
datasets, the pretrained run of --init_from, and the workdir's existing contents. Every bad input
a user can give is refused here, so a refused run leaves the workdir exactly as it was; a workdir
holding another run is refused too, or with --overwrite emptied of it once all else has passed."""

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable

import grain
import jax
from absl import logging
from jax.sharding import Mesh

from data.hf_tokenizer import HFTokenizer
from data.prepared_dataset import PreparedCorpus
from data.sentencepiece_tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from data.shards import ShardedBatches, host_shards
from data.token_cache import RawText, release
from model import sharding, store
from model.config import ModelConfig, get_preset
from model.family import family_of
from runtime.errors import UserError
from runtime.files import atomic_write
from train import distributed, ownership
from train.distill import Teacher, check_student, read_teacher
from train.flags import MODEL_OVERRIDES, TrainConfig, flagfile_text
from train.optimizer import make_optimizer
from train.tasks import Data, Task, data_shards, distill_task, get_task, target_len

_TMP_PREFIX = "meshlm-tokenizer-"
POSITIVE = ("steps", "batch_size", "grad_accum", "log_every", "save_every", "eval_batches",
            "keep_checkpoints")
# Settings that change neither the params nor their shapes: a pretrained model may differ in them.
# param_init only says how a run from scratch starts: a loaded or resumed model has its params.
_COMPUTE_ONLY = ("dtype", "remat", "attention", "num_labels", "param_init")


@dataclasses.dataclass
class Run:
    """Everything a validated run needs; `commit()` writes it to the workdir."""

    cfg: TrainConfig
    task: Task
    model: ModelConfig
    mesh: Mesh
    data: Data  # the corpus or the examples, split into train and eval
    tokenizer: Tokenizer | HFTokenizer
    workdir: str
    previous: dict | None  # config.json of an earlier run in this workdir
    train_data: grain.IterDataset | ShardedBatches  # this host's batches; endless, checkpointable
    eval_data: grain.IterDataset | ShardedBatches  # this host's held-out batches; one pass, in order
    # What the objective reads besides the data, added to every global batch (train and eval)
    # before the step: the teacher's logits for distill; None for every other objective.
    annotate: Callable[[dict], dict] | None = None

    @property
    def target_len(self) -> int:
        """Decoder tokens per row (0 outside the encoder-decoder family)."""
        return target_len(self.task, self.cfg)

    def commit(self, extra: dict) -> None:
        """Creates the workdir and writes the tokenizer's files (tokenizer.model, or an import's
        tokenizer.json and the special-token files beside it), config.json and flags.txt.

        On a multi-host run process 0 writes them, once every process has read the workdir as it
        was (each resolved the run from it), and the others go on when they are there."""
        distributed.barrier("meshlm: every process has read the workdir")
        try:
            if distributed.is_primary():
                self._write(extra)
        except OSError as e:  # prepare checked space and permissions; this is a race with them
            raise UserError(f"cannot write to --workdir={self.workdir} ({e.strerror}); free "
                            f"space or fix permissions, then rerun to resume") from None
        distributed.barrier("meshlm: the workdir is written")
        self._adopt_tokenizer(copy=False)

    def _adopt_tokenizer(self, copy: bool) -> None:
        """Points the tokenizer at its files in the workdir (copying them there if `copy`)."""
        files = self.tokenizer.files  # its first file is the tokenizer's own path
        target = os.path.join(self.workdir, next(iter(files)))
        if os.path.abspath(self.tokenizer.path) != os.path.abspath(target):
            # Under the standard names, so that the store finds them when the run resumes.
            if copy:
                store.write_tokenizer(files, self.workdir)
            discard_temp_tokenizer(self.tokenizer)
            self.tokenizer.path = target

    def _write(self, extra: dict) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self._adopt_tokenizer(copy=True)
        # Rerunning flags.txt must resume this run, never delete it again.
        cfg = self.cfg.replace(overwrite=False)
        config = {"flags": cfg.to_flags(), "model": self.model.to_dict(),
                  "corpus": {**self.data.fingerprint, "stream": stream_kind(self.data)},
                  **extra}
        store.write_config(self.workdir, config)
        with atomic_write(os.path.join(self.workdir, "flags.txt")) as f:
            f.write(flagfile_text(cfg))


def discard_temp_tokenizer(tokenizer: Tokenizer | HFTokenizer) -> None:
    """Removes the temp dir of a tokenizer that prepare trained (a no-op for any other)."""
    if os.path.basename(os.path.dirname(tokenizer.path)).startswith(_TMP_PREFIX):
        shutil.rmtree(os.path.dirname(tokenizer.path), ignore_errors=True)


def check_numbers(cfg: TrainConfig) -> None:
    for name in POSITIVE:
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.seq_len < 2:
        raise UserError(f"--seq_len must be at least 2, got {cfg.seq_len}")
    if cfg.learning_rate < 0 or cfg.warmup_steps < 0 or cfg.eval_every < 0:
        raise UserError("--learning_rate, --warmup_steps and --eval_every must not be negative")
    if cfg.target_len < 0 or cfg.num_classes < 0 or cfg.bleu_examples < 0 or cfg.data_shards < 0:
        raise UserError("--target_len, --num_classes, --bleu_examples and --data_shards must not "
                        "be negative")
    if cfg.nsp_weight < 0 or cfg.nsp_eval_pairs < 0:
        raise UserError(f"--nsp_weight and --nsp_eval_pairs must not be negative, got "
                        f"{cfg.nsp_weight} and {cfg.nsp_eval_pairs}")
    if not 0.0 < cfg.mask_rate < 1.0:
        raise UserError(f"--mask_rate must be in (0, 1), got {cfg.mask_rate}; BERT uses 0.15")
    if not 0.0 < cfg.noise_density < 1.0 or cfg.mean_span_length < 1.0:
        raise UserError(f"--noise_density must be in (0, 1) and --mean_span_length >= 1, got "
                        f"{cfg.noise_density} and {cfg.mean_span_length}; T5 uses 0.15 and 3")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UserError(f"--label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not cfg.distill_temperature > 0.0:
        raise UserError(f"--distill_temperature must be positive, got {cfg.distill_temperature}; "
                        f"Hinton et al. use 1 to 20")
    if not 0.0 <= cfg.distill_alpha <= 1.0:
        raise UserError(f"--distill_alpha must be in [0, 1] (the weight of the KL to the "
                        f"teacher), got {cfg.distill_alpha}")


def check_batch(cfg: TrainConfig, mesh: Mesh) -> None:
    shards = sharding.batch_shards(mesh)
    if cfg.batch_size % (shards * cfg.grad_accum):
        raise UserError(f"--batch_size={cfg.batch_size} must be divisible by the data-parallel "
                        f"size {shards} (mesh {dict(mesh.shape)}) times --grad_accum="
                        f"{cfg.grad_accum}; use a multiple of {shards * cfg.grad_accum}")
    if cfg.batch_size % jax.process_count():
        raise UserError(f"--batch_size={cfg.batch_size} must be divisible by the number of "
                        f"hosts {jax.process_count()}")
    shards = data_shards(cfg, jax.process_count())
    host_shards(shards, jax.process_index(), jax.process_count())  # a multiple of the hosts
    if cfg.batch_size % shards:
        raise UserError(f"--batch_size={cfg.batch_size} must be divisible by --data_shards="
                        f"{shards} (each data shard gives the same number of rows a batch)")
    distributed.check_batch_split(mesh, cfg.batch_size)


def _check_pretrained_checkpoint(cfg: TrainConfig, model: ModelConfig, mesh: Mesh) -> None:
    """The loop's check that --init_from's params fit the model, done here when --overwrite is
    about to delete an earlier run, so that a bad --init_from deletes nothing."""
    from model.abstract import abstract_params  # the model and orbax only on this path
    from train.checkpoint import match_pretrained

    match_pretrained(cfg.init_from, abstract_params(model, mesh))


def read_pretrained(cfg: TrainConfig, task: Task) -> ModelConfig | None:
    """config.json of the --init_from run; --objective=classify requires one."""
    if not cfg.init_from:
        if task.name == "classify":
            raise UserError("--objective=classify fine-tunes a pretrained encoder: pass "
                            "--init_from=WORKDIR of an mlm or mlm_nsp run")
        return None
    pretrained, _ = store.read_recorded(cfg.init_from, "init_from")  # fields added since: defaults
    task.check_family(pretrained, f"--init_from={cfg.init_from}")
    if pretrained.quant != "none":
        raise UserError(f"--init_from={cfg.init_from} is a quantized model (--quant="
                        f"{pretrained.quant}), which cannot be trained; start from the float "
                        f"model it was quantized from")
    return pretrained


def _check_same_model(model: ModelConfig, pretrained: ModelConfig, cfg: TrainConfig) -> None:
    theirs = pretrained.to_dict()
    changed = sorted(k for k, v in model.to_dict().items()
                     if k not in _COMPUTE_ONLY and theirs.get(k) != v)
    if changed:
        diffs = ", ".join(f"{k} ({theirs.get(k)} there, {getattr(model, k)} here)"
                          for k in changed[:3])
        raise UserError(f"--init_from={cfg.init_from} holds a model that differs in {diffs}; "
                        f"pass the size flags it was trained with")


def _tokenizer(cfg: TrainConfig, workdir: str | None, task: Task, data: Data,
               vocab_size: int) -> Tokenizer | HFTokenizer:
    """The workdir's tokenizer if resuming (workdir None: not resuming), else --tokenizer, else
    the --init_from run's (or imported model's), else one trained on the data (into a temp dir:
    it reaches the workdir only when the whole run has been validated) with the pieces the task
    needs. A prepared --data dir brings its own, which the others must equal."""
    if isinstance(data, PreparedCorpus):
        return _prepared_tokenizer(cfg, workdir, data)
    tokenizer = _find_tokenizer(workdir) if workdir else None
    if tokenizer is not None and cfg.tokenizer:
        _check_same_tokenizer(cfg, tokenizer)
    if tokenizer is None and cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    if tokenizer is None and cfg.teacher:  # the teacher's logits are over its own pieces
        tokenizer = _find_tokenizer(cfg.teacher)
        if tokenizer is None:
            raise UserError(f"--teacher={cfg.teacher} has no tokenizer files; the student must "
                            f"read the teacher's: pass them as --tokenizer")
    if tokenizer is None and cfg.init_from:
        tokenizer = _find_tokenizer(cfg.init_from)
    if tokenizer is None:
        logging.info("training a %d-piece tokenizer on %s", vocab_size, cfg.data)
        directory = tempfile.mkdtemp(prefix=_TMP_PREFIX)
        path = os.path.join(directory, "tokenizer.model")
        try:
            # Process 0 trains it and hands the file to the others: every host must tokenize
            # with the very same pieces, and training it once is enough.
            trained = None
            if distributed.is_primary():
                trained = train_tokenizer(task.tokenizer_texts(data), vocab_size, path,
                                          extra_symbols=task.extra_symbols)
            if jax.process_count() > 1:
                model = None
                if trained is not None:
                    with open(path, "rb") as f:
                        model = f.read()
                model = distributed.broadcast_bytes(model)
                if trained is None:
                    with atomic_write(path, "wb") as f:
                        f.write(model)
            tokenizer = trained if trained is not None else load_tokenizer(path)
        finally:
            if tokenizer is None:
                shutil.rmtree(directory, ignore_errors=True)
    return tokenizer


def _prepared_tokenizer(cfg: TrainConfig, workdir: str | None,
                        data: PreparedCorpus) -> Tokenizer:
    """The tokenizer the shards of --data were made with; a --tokenizer, or the tokenizer of the
    run resumed in the workdir, of the teacher or of --init_from, that differs from it is
    refused (their token ids would mean other pieces)."""
    tokenizer = load_tokenizer(data.tokenizer_path)
    with open(tokenizer.path, "rb") as f:
        prepared = f.read()
    others = [("--tokenizer=" + cfg.tokenizer, load_tokenizer(cfg.tokenizer).path)
              if cfg.tokenizer else None]
    for what, directory in (("the tokenizer of the run in --workdir", workdir),
                            (f"the tokenizer of --teacher={cfg.teacher}", cfg.teacher),
                            (f"the tokenizer of --init_from={cfg.init_from}", cfg.init_from)):
        found = _find_tokenizer(directory) if directory else None
        if found is not None:
            others.append((f"{what} ({found.path})", found.path))
    for what, path in filter(None, others):
        with open(path, "rb") as f:
            if f.read() != prepared:
                raise UserError(f"{what} is not the tokenizer --data={cfg.data} was prepared "
                                f"with ({data.tokenizer_path}); drop --tokenizer, or prepare "
                                f"the data with that tokenizer, or use a new --workdir")
    return tokenizer


def _find_tokenizer(path: str) -> Tokenizer | HFTokenizer | None:
    """The tokenizer of the model directory `path` (the store locates its file), or None."""
    found = store.tokenizer_file(path)
    return load_tokenizer(found) if found else None


def _check_same_tokenizer(cfg: TrainConfig, resumed: Tokenizer | HFTokenizer) -> None:
    """A resumed run keeps its workdir's tokenizer; a --tokenizer that differs from it would
    otherwise be silently ignored."""
    given = load_tokenizer(cfg.tokenizer)
    with open(given.path, "rb") as a, open(resumed.path, "rb") as b:
        if a.read() == b.read():
            return
    raise UserError(f"--tokenizer={cfg.tokenizer} ({given.vocab_size} pieces) is not the "
                    f"tokenizer of the run in --workdir ({resumed.path}, {resumed.vocab_size} "
                    f"pieces); drop --tokenizer to resume, or use a new --workdir or --overwrite")


def _check_same_stream(previous: dict | None, data: Data) -> None:
    """A resumed run must read the kind of stream its checkpointed iterator position is in:
    packed documents (the stdlib, and raw files before they were tokenized into shards) or
    windows of token shards."""
    if not previous or "corpus" not in previous:
        return
    recorded = previous["corpus"]
    # Unrecorded: a run from before the stream kinds were; on a prepared dir its position
    # counted rows, not the batches it counts now.
    before = recorded.get("stream") or ("rows" if "prepared" in recorded else "packed")
    now = stream_kind(data)
    if before != now:
        raise UserError(f"the run in --workdir read its data ({recorded.get('source')}) as "
                        f"{_STREAMS[before]}, this one would read {_STREAMS[now]}: the data "
                        f"position in its checkpoint cannot carry over; start a new --workdir "
                        f"or pass --overwrite")


_STREAMS = {"packed": "packed documents", "windows": "windows of token shards",
            "rows": "windows of token shards counted by row (meshlm before 2026-12-07)"}


def stream_kind(data: Data) -> str:
    """What the data iterator's position counts: windows of token shards, or packed documents."""
    return "windows" if isinstance(data, PreparedCorpus) else "packed"


def prepare(cfg: TrainConfig) -> Run:
    if not cfg.workdir:
        raise UserError("--workdir is required: the directory for this run's checkpoints and "
                        "metrics")
    check_numbers(cfg)
    teacher = read_teacher(cfg)  # distill's task is that of the teacher's family
    task = distill_task(family_of(teacher)) if teacher else get_task(cfg.objective)
    make_optimizer(cfg)  # refuses unknown optimizers and schedules
    overrides = {name: getattr(cfg, name) for name in MODEL_OVERRIDES}
    pretrained = read_pretrained(cfg, task)
    # Fine-tuning starts from the pretrained model as it is (an imported one matches no preset);
    # size flags may restate it, and _check_same_model refuses them if they change its shapes.
    base = pretrained if pretrained is not None else get_preset(cfg.preset)
    model_cfg = base.replace(**overrides)
    if teacher:  # a student has the teacher's vocabulary unless the flags say otherwise
        if cfg.vocab_size is None and pretrained is None:
            model_cfg = model_cfg.replace(vocab_size=teacher.vocab_size)
        check_student(cfg, model_cfg, teacher)
    task.check_family(model_cfg, f"--preset={cfg.preset}")
    mesh = sharding.make_mesh(cfg.mesh, dcn=cfg.dcn_mesh)
    check_batch(cfg, mesh)
    workdir = os.path.abspath(cfg.workdir)
    previous = ownership.read_previous(workdir, cfg.overwrite)
    discard = ownership.run_files(workdir) if cfg.overwrite else []
    ownership.check_writable(workdir)
    data = task.load_data(cfg)
    tokenizer = _tokenizer(cfg, None if discard else workdir, task, data, model_cfg.vocab_size)
    try:  # a tokenizer trained into a temp dir must not outlive a refused run
        if tokenizer.eos_id < 0:  # only an imported tokenizer can lack one; documents end in it
            raise UserError(f"tokenizer {tokenizer.path!r} has no end-of-sequence token; name "
                            f"one as eos_token in the tokenizer_config.json beside it")
        task.check_tokenizer(tokenizer, data)
        if isinstance(data, RawText):  # tokenized once now: memory stays flat (token_cache)
            data = data.tokenize(tokenizer)
        _check_same_stream(previous, data)
        model_cfg = _resolve_model(cfg, task, data, tokenizer, model_cfg, pretrained, previous,
                                   sized=teacher is not None)
        ownership.check_space(cfg, workdir, model_cfg)
        hosts = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        train_data = task.dataset(cfg, data, tokenizer, "train", **hosts)
        eval_data = task.dataset(cfg, data, tokenizer, "eval", **hosts)
        # Its params are read last of all checks (they take time and memory), yet before an
        # --overwrite deletes anything: a teacher that does not load refuses the run.
        annotate = Teacher(cfg.teacher, teacher, mesh).annotate if teacher else None
        if discard:  # last: only a run that passed every check may delete the earlier one
            ownership.check_overwrite(cfg, workdir, tokenizer, discard)
            if cfg.init_from:
                _check_pretrained_checkpoint(cfg, model_cfg, mesh)
            # Process 0 deletes, once every process has read the workdir it is about to change.
            distributed.barrier("meshlm: every process has read the run to overwrite")
            if distributed.is_primary():
                ownership.delete_run(workdir, discard)
            distributed.barrier("meshlm: the overwritten run is deleted")
    except BaseException:
        discard_temp_tokenizer(tokenizer)
        release(data)
        raise
    # Only now, so that a refused run prints its one error line and nothing else.
    if previous and previous.get("corpus", {}).get("sha256") != data.fingerprint["sha256"]:
        logging.warning("the data differ from those this workdir was trained on (%s, python "
                        "%s, now python %s): resuming continues on different data",
                        previous["corpus"].get("source"), previous["corpus"].get("python"),
                        data.fingerprint["python"])
    return Run(cfg=cfg, task=task, model=model_cfg, mesh=mesh, data=data, tokenizer=tokenizer,
               workdir=workdir, previous=previous, train_data=train_data, eval_data=eval_data,
               annotate=annotate)


def _resolve_model(cfg: TrainConfig, task: Task, data: Data, tokenizer: Tokenizer | HFTokenizer,
                   model_cfg: ModelConfig, pretrained: ModelConfig | None,
                   previous: dict | None, sized: bool = False) -> ModelConfig:
    """The model's vocab and task settings, checked against the tokenizer, the --init_from model
    and the model of the run already in the workdir. `sized`: its vocab_size is already set (a
    distilled student's is its teacher's)."""
    if cfg.vocab_size is None and pretrained is None and not sized:
        model_cfg = model_cfg.replace(vocab_size=tokenizer.vocab_size)
    elif model_cfg.vocab_size < tokenizer.vocab_size:
        raise UserError(f"the model's vocab_size={model_cfg.vocab_size} is smaller than the "
                        f"tokenizer's {tokenizer.vocab_size} pieces ({tokenizer.path}); use the "
                        f"model's own tokenizer or a larger --vocab_size")
    model_cfg = task.resolve_model(model_cfg, cfg, data)
    if pretrained is not None:
        _check_same_model(model_cfg, pretrained, cfg)
    if previous:
        # A resumed run keeps how it started where a preset's default changed under it: the init
        # (runs from before param_init were "normal") and the T5 presets' attention scaling
        # (unscaled before 2026-12-07), which no flag sets, so no flag could restore it.
        saved = previous.get("model", {})
        model_cfg = model_cfg.replace(
            param_init=saved.get("param_init", "normal"),
            scale_attention=saved.get("scale_attention", model_cfg.scale_attention))
    if previous and previous.get("model", {}) | {"param_init": model_cfg.param_init} != (
            model_cfg.to_dict()):
        changed = sorted(k for k, v in model_cfg.to_dict().items()
                         if previous.get("model", {}).get(k) != v)
        raise UserError(f"--workdir={cfg.workdir} holds a run of a different model (differs in "
                        f"{', '.join(changed)}); use a new --workdir or the original flags, or "
                        f"pass --overwrite to delete that run and start fresh")
    return model_cfg
