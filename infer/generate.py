"""`python -m infer.generate --checkpoint=PATH --prompt=TEXT --max_new_tokens=N`: streams the
continuation to the console; `--json=OUT` also writes prompt and generated ids and text.

For an encoder-decoder model the prompt is the source and the output its generated target;
`--num_beams>1` runs beam search there (the best hypothesis is printed when the search ends).
`--draft=PATH` decodes a decoder-only model speculatively (infer/engine/speculative.py)."""

import functools
import json
import math
import os
import sys

from absl import flags

from data.seq2seq_text import decode_text, encode_text
from model.flags import define_model_flags
from runtime import compilation_cache
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import atomic_write

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_model_flags("checkpoint", "mesh", "quant")
    flags.DEFINE_string("prompt", None, "Text to continue.")
    flags.DEFINE_string("batch_file", None, "File with one prompt per line, generated as one "
                                            "batch (instead of --prompt).")
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most per prompt.")
    flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 disables.")
    flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set with this probability mass.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string("json", None, "Also write {prompt_tokens, tokens, text} to this file.")
    flags.DEFINE_integer("num_beams", 1, "Beam width (encoder-decoder models); 1 is greedy or "
                                         "sampled decoding, >1 beam search.")
    flags.DEFINE_float("length_penalty", 1.0, "Beam search alpha: hypotheses rank by "
                                              "sum log p / ((5 + length) / 6) ** alpha (GNMT); 0 "
                                              "ranks by log p, > 0 favours longer, < 0 shorter "
                                              "outputs. Used only with --num_beams>1.")
    flags.DEFINE_string("draft", None, "Draft model for speculative decoding: a training workdir "
                                       "or converted model directory with --checkpoint's "
                                       "vocabulary (decoder-only). It proposes --draft_tokens "
                                       "tokens that the target checks in one forward pass; the "
                                       "output is distributed as without it (greedy: identical). "
                                       "Prompts are then decoded one at a time.")
    flags.DEFINE_integer("draft_tokens", 4, "Tokens the --draft model proposes per target "
                                            "forward pass (k, >= 1).")
    compilation_cache.define_flag()


def _prompts() -> list[str]:
    if bool(FLAGS.prompt) == bool(FLAGS.batch_file):
        raise UserError("give exactly one of --prompt=TEXT or --batch_file=PATH")
    if FLAGS.prompt:
        return [FLAGS.prompt]
    try:
        with open(FLAGS.batch_file, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--batch_file={FLAGS.batch_file} is unreadable ({e})") from None
    if not prompts:
        raise UserError(f"--batch_file={FLAGS.batch_file} has no prompts")
    return prompts


class _Stream:
    """Prints row 0's text as it grows. Callbacks may arrive out of step order, so tokens are
    kept by step and only the contiguous prefix is printed. Each token decodes a short window,
    not the whole text so far (which made streaming n tokens O(n^2)): the text of the window's
    tokens minus that of its tokens already printed (the window keeps printed tokens before
    the new ones: the last printed chunk, which starts on a character boundary, because a
    tokenizer drops the leading space of the first piece it decodes).
    Text ending in a partial multi-byte character waits for the rest."""

    def __init__(self, decode):
        self.decode, self.by_step, self.ids, self.printed = decode, {}, [], ""
        self.prefix, self.read = 0, 0  # window start; the first id not yet printed

    def __call__(self, step, tokens, done) -> None:
        self.by_step[int(step)] = None if bool(done[0]) else int(tokens[0])
        while self.by_step.get(len(self.ids)) is not None:
            self.ids.append(self.by_step.pop(len(self.ids)))
        if len(self.ids) == self.read:
            return
        before = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(before):])
            sys.stdout.flush()
            self.printed += text[len(before):]
            self.prefix, self.read = self.read, len(self.ids)

    def rest(self, text: str) -> str:
        """What of the whole generated `text` is still to print."""
        return text[len(self.printed):] if text.startswith(self.printed) else "\n" + text


def _check_search(sampling) -> None:
    if FLAGS.num_beams < 1:
        raise UserError(f"--num_beams must be >= 1, got {FLAGS.num_beams}")
    if not math.isfinite(FLAGS.length_penalty):
        raise UserError(f"--length_penalty must be a finite number, got {FLAGS.length_penalty}")
    if FLAGS.num_beams > 1 and sampling.temperature > 0:
        raise UserError("--num_beams>1 is a deterministic search; drop --temperature (or use "
                        "--num_beams=1 to sample)")


def _check_family(family) -> None:
    if not family.generates:
        raise UserError(f"{FLAGS.checkpoint} is an {family.title} model, which does not "
                        f"generate text; infer.score writes its MLM logits")
    if family.generates != "seq2seq" and FLAGS.num_beams > 1:
        raise UserError(f"--num_beams>1 (beam search) is for encoder-decoder models; this one is "
                        f"{family.title}")


def _check_draft(family) -> None:
    """Refuses a --draft the target cannot use, from the configs alone (before any loading)."""
    from infer.engine.load import read_config
    from infer.engine.speculative import check_pair

    if FLAGS.draft_tokens < 1:
        raise UserError(f"--draft_tokens must be >= 1, got {FLAGS.draft_tokens}")
    if not FLAGS.draft:
        return
    if FLAGS.num_beams > 1:
        raise UserError("--draft (speculative decoding) does not combine with --num_beams>1; "
                        "drop one of them")
    if family.generates != "causal":
        raise UserError(f"--draft (speculative decoding) is for decoder-only models; "
                        f"{FLAGS.checkpoint} is {family.name}")
    if not os.path.isfile(os.path.join(FLAGS.draft, "config.json")):
        raise UserError(f"--draft={FLAGS.draft} has no config.json; point it at a training "
                        f"workdir or a converted model")
    check_pair(read_config(FLAGS.checkpoint), read_config(FLAGS.draft))


def _speculative(loaded, draft, prompt_ids: list[list[int]], sampling, eos_id: int, stream):
    """(generated ids per prompt, the added-up stats), each prompt decoded speculatively."""
    from infer.engine.speculative import speculative_generate, summarize

    out, stats = [], []
    for row, prompt in enumerate(prompt_ids):
        # One seed per prompt, so equal prompts are not sampled alike (as rows of a batch).
        tokens, row_stats = speculative_generate(loaded, draft, prompt, FLAGS.max_new_tokens,
                                                 FLAGS.draft_tokens, sampling, FLAGS.seed + row,
                                                 eos_id, on_token=stream)
        out.append(tokens)
        stats.append(row_stats)
    stats = summarize(stats)
    print(f"speculative: {stats['accepted']}/{stats['proposed']} draft tokens accepted "
          f"({100 * stats['acceptance_rate']:.1f}%), {stats['tokens_per_target_pass']:.1f} "
          f"tokens per target pass", file=sys.stderr)
    return out, stats


def _seq2seq(loaded, tok, prompts: list[str], sampling, stream):
    """(source ids as the encoder reads them, generated ids) for an encoder-decoder model."""
    from infer.engine import beam, seq2seq

    # Training ends every source with EOS (data/seq2seq.py, data/span.py); so does inference.
    source_ids = [encode_text(tok, p).tolist() + [tok.eos_id] for p in prompts]
    if FLAGS.num_beams == 1:
        out = seq2seq.generate(loaded, source_ids, FLAGS.max_new_tokens, sampling, FLAGS.seed,
                               tok.eos_id, on_token=stream)
    else:
        beams = seq2seq.beam_search(loaded, source_ids, FLAGS.max_new_tokens, FLAGS.num_beams,
                                    FLAGS.length_penalty, tok.eos_id)
        out, _ = beam.best_rows(beams, tok.eos_id)
    return source_ids, out


def main(argv: list[str]) -> None:
    del argv
    from infer.engine.engine import check_lengths, generate
    from infer.engine.load import load, read_config
    from infer.engine.sampling import Sampling
    from model.family import family_of

    if not FLAGS.checkpoint:
        raise UserError("--checkpoint is required")
    compilation_cache.enable(FLAGS.compilation_cache)
    prompts = _prompts()
    sampling = Sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p).validated()
    _check_search(sampling)
    if FLAGS.json and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.json))):
        raise UserError(f"--json={FLAGS.json}: its directory does not exist")
    family = family_of(read_config(FLAGS.checkpoint))
    _check_draft(family)
    _check_family(family)
    loaded = load(FLAGS.checkpoint, FLAGS.mesh, FLAGS.quant)
    tok = loaded.tokenizer
    if tok is None:
        raise UserError(f"{FLAGS.checkpoint} has no tokenizer (tokenizer.model or "
                        f"tokenizer.json); text generation needs one — score token ids with "
                        f"python -m infer.score instead")
    draft = load(FLAGS.draft, FLAGS.mesh) if FLAGS.draft else None
    seq2seq = family.generates == "seq2seq"
    # Beam search knows its best hypothesis only at the end: nothing to stream.
    # A target decodes as training encoded it (data/seq2seq.py: after one space, dropped here).
    decode = functools.partial(decode_text, tok) if seq2seq else tok.decode
    stream = _Stream(decode) if len(prompts) == 1 and FLAGS.num_beams == 1 else None
    if seq2seq:
        prompt_ids, out = _seq2seq(loaded, tok, prompts, sampling, stream)
    else:
        prompt_ids = [tok.encode(p).tolist() for p in prompts]
        # Refused before the prompt is echoed, so a refusal is all the output there is.
        for model, role in ((loaded, "model's"), (draft, "draft's")):
            if model is not None:
                check_lengths(model.config, max(map(len, prompt_ids)), FLAGS.max_new_tokens, role)
        if stream:
            sys.stdout.write(prompts[0])
        if draft:
            out, speculative = _speculative(loaded, draft, prompt_ids, sampling, tok.eos_id,
                                            stream)
        else:
            out = generate(loaded, prompt_ids, FLAGS.max_new_tokens, sampling, FLAGS.seed,
                           tok.eos_id, on_token=stream)
    texts = [decode(ids) for ids in out]
    if stream:
        sys.stdout.write(stream.rest(texts[0]) + "\n")
    elif seq2seq and len(prompts) == 1:
        print(texts[0])
    else:
        for prompt, text in zip(prompts, texts, strict=True):
            print(f"{prompt}\n-> {text}\n---" if seq2seq else f"{prompt}{text}\n---")
    if FLAGS.json:
        record = {"prompt_tokens": prompt_ids, "tokens": out, "text": texts}
        if draft:
            record["speculative"] = speculative
        with atomic_write(FLAGS.json) as f:
            json.dump(record, f)


if __name__ == "__main__":
    run_command(main, define_flags, "infer.generate")
