"""--objective -> everything the one loop needs to train it: the model family it trains, the data
it reads and the batches made from them, the tokenizer pieces those need, the loss and eval
statistics, and the baseline a trained model must beat.

A family is data + objective + model; the loop (train/loop.py) is the same for all of them.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import grain

from data.classify import ClassificationTask, classification_dataset, classification_task
from data.corpus import Corpus, load_corpus
from data.mlm import mlm_dataset, special_ids
from data.nsp import nsp_dataset
from data.options import StreamOptions
from data.pipeline import PreparedSplit, packed_rows
from data.prepared_dataset import PreparedCorpus, load_prepared, prepared_unigram_loss
from data.sentencepiece_tokenizer import BERT_SYMBOLS, Tokenizer
from data.seq2seq import Seq2SeqTask, seq2seq_dataset, seq2seq_task
from data.shards import ShardedBatches, host_shards
from data.span import SENTINELS, raw_length, sentinel_ids, span_dataset
from data.token_cache import RawText, raw_text
from data.token_shards import is_prepared
from data.unigram import unigram_loss
from model.config import ModelConfig
from model.family import FAMILIES, Family, family_of
from runtime.errors import UserError
from train import objectives
from train.flags import TrainConfig

# Each has .fingerprint; all but a prepared dir (python -m data.prepare) .train and .eval. Raw
# files of a text objective (RawText) become a PreparedCorpus once the tokenizer is known.
Data = Corpus | Seq2SeqTask | ClassificationTask | PreparedCorpus | RawText
DEFAULT_NUM_CLASSES = 8
# The batches made from packed token rows, which a prepared directory's windows give as well
# (raw files of these objectives are tokenized into one: data/token_cache.py). NSP needs whole
# documents to pair chunks, classify and seq2seq their own examples.
PREPARED_READERS = ("clm", "mlm", "span")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    family: Family  # the family of the models it trains
    kind: str  # its data: "text" (a corpus), "pairs" (seq2seq) or "labels" (classification)
    loss: Callable  # (model, params, batch, rng, **loss_options(cfg)) -> (sum, count)
    stats: Callable  # (model, params, batch) -> {name: (sum, count)}; "loss" is eval_loss
    extra_symbols: tuple[str, ...] = ()  # tokenizer pieces its batches need
    loss_options: Callable[[TrainConfig], dict] = lambda cfg: {}
    lm_head: bool = True  # whether the loss reads the vocabulary logits (for the FLOP count)
    reads: str = ""  # the task whose data and batches it reads when not its own (distill)
    # Held-out rows an evaluation reads at least, whatever --eval_batches says (mlm_nsp: one
    # NSP label a row, so enough rows for a tight interval on nsp_accuracy).
    min_eval_rows: Callable[[TrainConfig], int] = lambda cfg: 0

    def objective(self, cfg: TrainConfig) -> Callable:
        return functools.partial(self.loss, **self.loss_options(cfg))

    def eval_batches(self, cfg: TrainConfig) -> int:
        """Held-out batches per evaluation: --eval_batches, or more to reach `min_eval_rows`."""
        return max(cfg.eval_batches, -(-self.min_eval_rows(cfg) // cfg.batch_size))

    def load_data(self, cfg: TrainConfig) -> Data:
        if is_prepared(cfg.data):
            if (self.reads or self.name) not in PREPARED_READERS:
                raise UserError(f"--data={cfg.data} is a prepared directory (token windows), "
                                f"which --objective={'/'.join(PREPARED_READERS)} read; "
                                f"--objective={self.name} needs the raw files")
            return load_prepared(cfg.data)
        if self.kind == "pairs":
            return seq2seq_task(cfg.data, eval_fraction=cfg.eval_fraction)
        if self.kind == "labels":
            num_classes = cfg.num_classes or DEFAULT_NUM_CLASSES
            if cfg.data == "stdlib":
                return classification_task("stdlib", num_classes=num_classes,
                                           eval_fraction=cfg.eval_fraction)
            return classification_task(cfg.data, eval_fraction=cfg.eval_fraction)
        if cfg.data != "stdlib" and (self.reads or self.name) in PREPARED_READERS:
            return raw_text(cfg.data, cfg.eval_fraction)  # tokenized into shards: see prepare
        return load_corpus(cfg.data, cfg.eval_fraction)

    def tokenizer_texts(self, data: Data) -> list[str]:
        """The text a tokenizer for this task is trained on."""
        if isinstance(data, RawText):
            return data.tokenizer_texts()
        if self.kind == "pairs":
            return [text for pair in data.train for text in pair]
        if self.kind == "labels":
            return [example.text for example in data.train]
        return data.train

    def check_tokenizer(self, tokenizer: Tokenizer, data: Data) -> None:
        """A UserError if the tokenizer lacks the pieces this task's batches need."""
        try:
            if BERT_SYMBOLS[0] in self.extra_symbols:
                special_ids(tokenizer)
            if SENTINELS[0] in self.extra_symbols:
                sentinel_ids(tokenizer)
        except UserError:
            if not isinstance(data, PreparedCorpus):
                raise
            flag = "--bert_symbols" if BERT_SYMBOLS[0] in self.extra_symbols else "--sentinels"
            raise UserError(f"--data={data.directory} was prepared with a tokenizer that lacks "
                            f"the pieces --objective={self.name} needs; prepare it again with "
                            f"python -m data.prepare {flag} (or a --tokenizer that has them)")

    def check_family(self, model: ModelConfig, what: str) -> None:
        family = family_of(model)
        if family is not self.family:
            raise UserError(f"--objective={self.name} trains the {self.family.name} family (e.g. "
                            f"--preset={self.family.example_preset}), but {what} is "
                            f"{_article(family.name)} {family.name} model; pick a matching "
                            f"--preset/--objective")

    def resolve_model(self, model: ModelConfig, cfg: TrainConfig, data: Data) -> ModelConfig:
        """The family's own settings: head sizes and a position table long enough."""
        model = model.replace(max_len=max(model.max_len, cfg.seq_len, target_len(self, cfg)))
        if self.name == "mlm_nsp":
            return model.replace(num_labels=2)
        if self.name == "classify":
            return model.replace(num_labels=num_labels(cfg, data))
        return model

    def dataset(self, cfg: TrainConfig, data: Data, tokenizer: Tokenizer, split: str,
                process_index: int = 0, process_count: int = 1) -> grain.IterDataset | ShardedBatches:
        """This host's batches of the "train" split (shuffled, endless) or "eval" (one pass in
        a fixed order, the last batch padded with rows of weight 0): the rows of the data shards
        it reads (data/shards.py; --data_shards, default one per process). Held-out examples and
        sentence pairs are listed in file order (a pair's A by its document), so they are
        shuffled once (by --seed) to make any first --eval_batches a fair sample across the
        held-out documents; held-out text for clm/mlm/span stays in order (its documents are
        already spread by hash)."""
        count = data_shards(cfg, process_count)
        streams = [self._shard(cfg, data, tokenizer, split, index, count)
                   for index in host_shards(count, process_index, process_count)]
        return streams[0] if len(streams) == 1 else ShardedBatches(streams)

    def _shard(self, cfg: TrainConfig, data: Data, tokenizer: Tokenizer, split: str,
               shard_index: int, shard_count: int) -> grain.IterDataset:
        train = split == "train"
        batches = self.reads or self.name
        shuffle = train or self.kind != "text" or batches == "mlm_nsp"
        options = StreamOptions(batch_size=cfg.batch_size // shard_count, seed=cfg.seed,
                                shuffle=shuffle, repeat=train,
                                shard_index=shard_index, shard_count=shard_count)
        if isinstance(data, PreparedCorpus):  # load_data admits it for PREPARED_READERS
            items = PreparedSplit(data, split)
        else:
            items = data.train if train else data.eval
        if batches == "clm":
            return packed_rows(items, tokenizer, options, length=cfg.seq_len + 1)
        if batches == "mlm":
            return mlm_dataset(items, tokenizer, options, length=cfg.seq_len,
                               mask_rate=cfg.mask_rate)
        if batches == "mlm_nsp":
            return nsp_dataset(items, tokenizer, options, length=cfg.seq_len,
                               mask_rate=cfg.mask_rate)
        if batches == "classify":
            return classification_dataset(items, tokenizer, options, length=cfg.seq_len)
        if batches == "seq2seq":
            return seq2seq_dataset(items, tokenizer, options, source_length=cfg.seq_len,
                                   target_length=target_len(self, cfg))
        return span_dataset(items, tokenizer, options, length=cfg.seq_len,
                            target_length=cfg.target_len, noise_density=cfg.noise_density,
                            mean_span_length=cfg.mean_span_length)

    def tokens_per_row(self, cfg: TrainConfig) -> int:
        """Tokens a row of a batch computes on (encoder + decoder for encoder-decoders)."""
        return cfg.seq_len + target_len(self, cfg)

    def baseline(self, tokenizer: Tokenizer, data: Data) -> dict[str, Any]:
        """What a model that ignores its input reaches, for config.json and the console: the
        unigram loss of the predicted text, or the majority-class accuracy."""
        if isinstance(data, PreparedCorpus):
            return {"unigram_loss": prepared_unigram_loss(data)}
        if self.kind == "labels":
            return {"majority_accuracy": data.majority_accuracy(),
                    "label_names": data.label_names}
        if self.kind == "pairs":
            return {"unigram_loss": unigram_loss(tokenizer, [p.target for p in data.train],
                                                 [p.target for p in data.eval])}
        return {"unigram_loss": unigram_loss(tokenizer, data.train, data.eval)}


def spread(items: list, n: int) -> list:
    """n items spread evenly over `items` (all of them if n >= len(items)), in order."""
    step = max(len(items) / max(n, 1), 1.0)
    return [items[int(i * step)] for i in range(min(n, len(items)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def data_shards(cfg: TrainConfig, process_count: int) -> int:
    """How many shards the data stream is split into: --data_shards, or one per process."""
    return cfg.data_shards or process_count


def target_len(task: Task, cfg: TrainConfig) -> int:
    """Decoder tokens per row: 0 outside the encoder-decoder family."""
    if task.name == "seq2seq":
        return cfg.target_len or cfg.seq_len
    if task.name == "span":
        needed = raw_length(cfg.seq_len, cfg.noise_density, cfg.mean_span_length)[1]
        return max(cfg.target_len, needed)
    return 0


def num_labels(cfg: TrainConfig, data: ClassificationTask) -> int:
    found = data.num_classes
    if cfg.num_classes and cfg.num_classes < found:
        raise UserError(f"--num_classes={cfg.num_classes} but {cfg.data} has {found} labels "
                        f"({', '.join(data.label_names[:5])}, ...); raise it or leave it 0")
    classes = cfg.num_classes or found
    if classes < 2:
        raise UserError(f"classify needs at least 2 classes, but {cfg.data} has only the label "
                        f"{data.label_names[0]!r}; add examples of other labels")
    return classes


def _nsp_weight(cfg: TrainConfig) -> dict:
    # Default: masked tokens in a full [CLS] A [SEP] B [SEP] row, so NSP weighs as much as MLM.
    if cfg.nsp_weight:
        return {"nsp_weight": cfg.nsp_weight}
    return {"nsp_weight": float(max(1, round(cfg.mask_rate * (cfg.seq_len - 3))))}


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("clm", FAMILIES["decoder"], "text", objectives.clm, objectives.clm_stats),
    Task("mlm", FAMILIES["encoder"], "text", objectives.mlm, objectives.mlm_stats, BERT_SYMBOLS),
    Task("mlm_nsp", FAMILIES["encoder"], "text", objectives.mlm_nsp, objectives.mlm_nsp_stats,
         BERT_SYMBOLS, _nsp_weight, min_eval_rows=lambda cfg: cfg.nsp_eval_pairs),
    Task("classify", FAMILIES["encoder"], "labels", objectives.classify, objectives.classify_stats,
         BERT_SYMBOLS, lm_head=False),
    Task("seq2seq", FAMILIES["encoder_decoder"], "pairs", objectives.seq2seq, objectives.seq2seq_stats,
         loss_options=lambda cfg: {"label_smoothing": cfg.label_smoothing}),
    Task("span", FAMILIES["encoder_decoder"], "text", objectives.seq2seq, objectives.seq2seq_stats,
         SENTINELS, lambda cfg: {"label_smoothing": cfg.label_smoothing}),
)}


# --objective=distill trains its teacher's family on the batches of that family's pretraining
# task, with the same positions scored (train/objectives.py: distill). Encoder-decoders (their
# seq2seq and span batches) are not wired up.
DISTILLED = ("clm", "mlm")
_ACCURACY = {"clm": "", "mlm": "mlm_accuracy"}  # the token accuracy the base task reports


def get_task(name: str) -> Task:
    """The task of --objective=name; distill's is made from its teacher by `distill_task`."""
    if name == "distill":
        raise UserError("--objective=distill needs --teacher=PATH: the training workdir or "
                        "converted model whose logits the student learns from")
    if name not in TASKS:
        raise UserError(f"unknown --objective={name!r}; choose one of {', '.join(TASKS)}, "
                        f"distill")
    return TASKS[name]


def distill_task(teacher_family: Family) -> Task:
    """--objective=distill from a teacher of `teacher_family` (one whose pretraining is in
    DISTILLED): the data, batches and tokenizer pieces of that base task (clm, mlm); its loss
    mixes the cross-entropy with the KL to the teacher (--distill_alpha, --distill_temperature)."""
    base = TASKS[teacher_family.pretraining]
    predict = objectives.PREDICTIONS[base.name]
    return dataclasses.replace(
        base, name="distill", reads=base.name,
        loss=functools.partial(objectives.distill, predict=predict),
        stats=functools.partial(objectives.distill_stats, predict=predict,
                                accuracy=_ACCURACY[base.name]),
        loss_options=lambda cfg: {"temperature": cfg.distill_temperature,
                                  "alpha": cfg.distill_alpha})
