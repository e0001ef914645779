"""`python -m data.tokenizer --data=stdlib --vocab_size=4096 --out=PATH [--bert_symbols]
[--sentinels]`: trains the SentencePiece tokenizer and prints its held-out bytes per token.

A command only: the tokenizer itself lives in data/sentencepiece_tokenizer.py, which is what
other modules import.
"""

from collections.abc import Sequence

from absl import flags

from data.corpus import load_corpus, sample
from data.sentencepiece_tokenizer import BERT_SYMBOLS, bytes_per_token, train_tokenizer
from data.span import SENTINELS
from runtime.command import run_command


def main(argv: Sequence[str]) -> None:
    del argv  # run_command refuses stray arguments
    args = flags.FLAGS
    corpus = load_corpus(args.data)
    extra = (BERT_SYMBOLS if args.bert_symbols else ()) + (SENTINELS if args.sentinels else ())
    tokenizer = train_tokenizer(corpus.train, args.vocab_size, args.out, extra_symbols=extra)
    held_out = sample(corpus.eval, 1_000_000)
    print(f"wrote {tokenizer.path}: vocab_size={tokenizer.vocab_size}")
    print(f"held-out bytes/token: {bytes_per_token(tokenizer, held_out):.3f}")


def define_flags() -> None:
    flags.DEFINE_string(
        "data",
        "stdlib",
        "Corpus: 'stdlib' or comma-separated .txt/.jsonl/.parquet paths, globs or directories.",
    )
    flags.DEFINE_integer("vocab_size", 4096, "Number of tokens in the vocabulary.")
    flags.DEFINE_bool(
        "bert_symbols",
        False,
        "Add the pieces [MASK], [CLS], [SEP] (ids 6, 7, 8) that the MLM/NSP/classify data needs.",
    )
    flags.DEFINE_bool(
        "sentinels",
        False,
        "Add the 100 pieces <extra_id_0> ... <extra_id_99> that T5 span corruption needs.",
    )
    flags.DEFINE_string("out", None, "Path of the SentencePiece .model file to write. Required.")
    flags.mark_flag_as_required("out")


if __name__ == "__main__":
    run_command(main, define_flags, "data.tokenizer")
