"""`python -m data.prepare --data=SPEC --out=DIR [--tokenizer=PATH | --vocab_size=N]
[--eval_fraction=F] [--num_workers=N]`: tokenizes a corpus into memory-mappable token shards that
`python -m train --data=DIR` streams from.

A command only: the job is data/prepare_job.py, the directory's format data/token_shards.py.
"""

from collections.abc import Sequence

from absl import flags

from data.prepare_job import prepare_corpus
from data.sentencepiece_tokenizer import BERT_SYMBOLS
from data.span import SENTINELS
from runtime.command import run_command
from runtime.errors import UserError


def main(argv: Sequence[str]) -> None:
    del argv  # run_command refuses stray arguments
    args = flags.FLAGS
    if not args.out:  # not absl-required: two missing flags would make two error lines
        raise UserError("--out=DIR is required: the directory to write the prepared data to")
    if args.tokenizer and args["vocab_size"].present:
        raise UserError("pass --tokenizer=PATH or --vocab_size=N (to train one), not both")
    extra = (BERT_SYMBOLS if args.bert_symbols else ()) + (SENTINELS if args.sentinels else ())
    if extra and args.tokenizer:
        raise UserError("--bert_symbols/--sentinels add pieces to the tokenizer data.prepare "
                        "trains; a --tokenizer brings its own pieces: drop one or the other")
    manifest = prepare_corpus(args.data, args.out, tokenizer=args.tokenizer or "",
                              vocab_size=args.vocab_size, eval_fraction=args.eval_fraction,
                              num_workers=args.num_workers, shard_mb=args.shard_mb,
                              extra_symbols=extra)
    tokens, docs = manifest["num_tokens"], manifest["num_documents"]
    print(f"prepared {args.out}: {len(manifest['shards'])} shards, train {docs['train']} "
          f"documents / {tokens['train']} tokens, eval {docs['eval']} documents / "
          f"{tokens['eval']} tokens ({manifest['dtype']})")


def define_flags() -> None:
    flags.DEFINE_string("data", None, "Corpus: comma-separated .txt/.jsonl (field text)/.parquet "
                        "(column text) files, .txt.gz/.jsonl.gz/.zst, globs, directories, or a "
                        "datasets save_to_disk directory (column text). Required.")
    flags.DEFINE_string("out", None, "The directory to write the shards and manifest.json to "
                        "(new, empty, or an interrupted preparation to continue). Required.")
    flags.DEFINE_string("tokenizer", None, "A SentencePiece .model to tokenize with; default: "
                        "train one of --vocab_size pieces on a sample of the training split.")
    flags.DEFINE_integer("vocab_size", 4096, "Pieces of the tokenizer trained when --tokenizer "
                         "is not given (default 4096).")
    flags.DEFINE_float("eval_fraction", 0.02, "Fraction of documents held out for eval, chosen "
                       "by a hash of each document's text (default 0.02).")
    flags.DEFINE_integer("num_workers", 1, "Tokenizer worker processes; the shards do not depend "
                         "on it (default 1).")
    flags.DEFINE_float("shard_mb", 64.0, "Input megabytes (MiB) per output shard, the unit of "
                       "work and of restart (default 64).")
    flags.DEFINE_bool("bert_symbols", False, "Train the tokenizer with [MASK]/[CLS]/[SEP] pieces, "
                      "which --objective=mlm needs.")
    flags.DEFINE_bool("sentinels", False, "Train the tokenizer with T5's <extra_id_N> sentinel "
                      "pieces, which --objective=span needs.")
    flags.mark_flag_as_required("data")


if __name__ == "__main__":
    run_command(main, define_flags, "data.prepare")
