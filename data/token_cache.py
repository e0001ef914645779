"""Raw --data files of a text objective, streamed: training reads them as `python -m data.prepare`
would, tokenizing them once at the start of the run into a temporary prepared directory, and
then streams windows from its shards like any prepared corpus. So host memory does not grow with
the corpus even without a prepare step; a corpus worth tokenizing once for many runs (or many
hosts) is better prepared by hand (README: Pretraining data).

The stdlib default and the example-shaped data (seq2seq pairs, labels, NSP's documents) are read
whole: they are small, and their batches need more than a token stream.
"""

import atexit
import dataclasses
import os
import platform
import shutil
import tempfile

from absl import logging

from data import prepare_sources
from data.corpus import Corpus, load_corpus, sample
from data.prepare_job import OneSidedSplit, prepare_corpus, tokenizer_sample
from data.prepared_dataset import PreparedCorpus, load_prepared
from data.sentencepiece_tokenizer import MAX_TRAIN_CHARS, Tokenizer
from runtime.errors import UserError

_PREFIX = "meshlm-tokens-"
UNIT_BYTES = 64 << 20  # data.prepare's default --shard_mb: the units its plan has


@dataclasses.dataclass(frozen=True)
class RawText:
    """Raw --data files, planned (paths checked) but not read yet."""

    spec: str
    eval_fraction: float
    units: list[dict]

    def tokenizer_texts(self) -> list[str]:
        """The training documents a tokenizer is trained on (data/corpus.py `sample`'s pick),
        kept while streaming the corpus once; for a corpus too small for the split by hash
        (see `tokenize`), those of data/corpus.py's split."""
        texts, counts = tokenizer_sample(self.units, self.eval_fraction)
        if counts["train"] and counts["eval"]:
            return texts
        return sample(load_corpus(self.spec, self.eval_fraction).train, MAX_TRAIN_CHARS)

    def tokenize(self, tokenizer) -> PreparedCorpus | Corpus:
        """The corpus tokenized by `tokenizer` into a temporary prepared directory, removed by
        `release` (at the end of the run) or at exit. An imported (Hugging Face) tokenizer has
        no file the shards' format records, and a corpus so small that the split by document
        hash leaves a split empty needs data/corpus.py's fallbacks (the document of smallest
        hash held out): both are read whole."""
        if not isinstance(tokenizer, Tokenizer):
            return load_corpus(self.spec, self.eval_fraction)
        directory = tempfile.mkdtemp(prefix=_PREFIX)
        try:
            logging.info("tokenizing --data=%s into %s (prepare it once with python -m "
                         "data.prepare to skip this)", self.spec, directory)
            out = os.path.join(directory, "prepared")
            prepare_corpus(self.spec, out, tokenizer=tokenizer.path,
                           eval_fraction=self.eval_fraction, shard_mb=UNIT_BYTES / (1 << 20),
                           show_progress=None)
            corpus = load_prepared(out, checksums=False)  # written just now, by this process
        except OneSidedSplit:
            shutil.rmtree(directory, ignore_errors=True)
            return load_corpus(self.spec, self.eval_fraction)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        _TEMPORARY.add(directory)
        # Recorded as the source it came from, not the temporary path (which changes each run).
        fingerprint = {**corpus.manifest["source"], "python": platform.python_version()}
        return dataclasses.replace(corpus, fingerprint=fingerprint)


# The temporary directories of this process: released by the run that made them, the rest at
# exit. (Not on garbage collection: a dataset outlives its corpus object and maps the files.)
_TEMPORARY: set[str] = set()


def release(data) -> None:
    """Removes the temporary token shards of `data` (a no-op for any other data)."""
    directory = os.path.dirname(getattr(data, "directory", "") or "")
    if directory in _TEMPORARY:
        _TEMPORARY.discard(directory)
        shutil.rmtree(directory, ignore_errors=True)


@atexit.register
def _remove_all() -> None:
    for directory in list(_TEMPORARY):
        shutil.rmtree(directory, ignore_errors=True)


def raw_text(spec: str, eval_fraction: float) -> RawText:
    """The raw files of `spec`, their paths and sizes checked (a UserError if none)."""
    if not 0.0 < eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be in (0, 1), got {eval_fraction}; pass e.g. 0.02.")
    units = prepare_sources.plan_units(spec, unit_bytes=UNIT_BYTES)
    units = prepare_sources.split_one_document(units, eval_fraction)
    return RawText(spec=spec, eval_fraction=eval_fraction, units=units)
