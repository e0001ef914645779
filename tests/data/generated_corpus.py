"""A small generated corpus in every format data.prepare reads (jsonl, txt, txt.gz, parquet with
several row groups), over a few characters so that a 320-piece tokenizer holds them all."""

import gzip
import json
import os
import random

VOCAB = 320
WORDS = ("def", "return", "self", "value", "index", "while", "for", "in", "if", "else", "print",
         "data", "shard", "token", "batch", "x", "y", "0", "1", "2")


def _document(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 12)):
        indent = "    " * rng.randint(0, 2)
        lines.append(indent + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) + ":")
    return "\n".join(lines) + "\n"


def write_corpus(directory: str, seed: int = 0, jsonl_docs: int = 160) -> str:
    """Writes the corpus files into `directory` and returns it (the --data spec)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "a.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": _document(rng)}) + "\n" for _ in range(jsonl_docs))
        f.write("\n")  # a blank line is no record
    for i in range(3):
        with open(os.path.join(directory, f"b{i}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(_document(rng) for _ in range(3)))
    with gzip.open(os.path.join(directory, "c.jsonl.gz"), "wt", encoding="utf-8") as f:
        for _ in range(20):
            f.write(json.dumps({"text": _document(rng)}) + "\n")
    table = pa.table({"text": [_document(rng) for _ in range(60)] + [None, "   \n"]})
    pq.write_table(table, os.path.join(directory, "d.parquet"), row_group_size=16)
    return directory


def documents_in_order(directory: str) -> list[str]:
    """The corpus's non-blank documents in the order data.prepare reads them (sorted files)."""
    import pyarrow.parquet as pq

    docs = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".parquet"):
            docs.extend(v for v in pq.read_table(path).column("text").to_pylist() if v)
        elif name.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                docs.append(f.read())
        else:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                docs.extend(json.loads(line)["text"] for line in f if line.strip())
    return [d for d in docs if d.strip()]
