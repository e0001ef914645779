"""Masked-LM batches (BERT): the packed causal-LM rows with 15% of their tokens chosen to predict.

Of the chosen tokens 80% become [MASK], 10% a random ordinary token and 10% stay (Devlin et al.).
"""

import dataclasses

import grain
import numpy as np

from data.examples import derived_seed
from data.options import StreamOptions
from data.pipeline import TextSource, packed_rows
from data.sentencepiece_tokenizer import BERT_SYMBOLS, Tokenizer
from runtime.errors import UserError

MASK_RATE = 0.15
# Of the chosen positions: the first 80% of [0, 1) -> [MASK], the next 10% -> random, rest kept.
MASK_TOKEN_FRACTION, RANDOM_TOKEN_FRACTION = 0.8, 0.1


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids no objective predicts or masks: pad/unk/bos/eos and the BERT pieces."""

    pad: int
    unk: int
    bos: int
    eos: int
    mask: int
    cls: int
    sep: int

    def all(self) -> np.ndarray:
        return np.asarray(dataclasses.astuple(self), np.int32)


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The special ids of `tokenizer`; [MASK]/[CLS]/[SEP] are its pieces of those names.

    A tokenizer trained without them (the default) is refused: retrain it with
    `python -m data.tokenizer --bert_symbols` or `train_tokenizer(..., extra_symbols=BERT_SYMBOLS)`.
    """
    ids = {symbol: tokenizer.piece_id(symbol) for symbol in BERT_SYMBOLS}
    missing = [symbol for symbol, i in ids.items() if i is None]
    if missing:
        raise UserError(
            f"tokenizer {tokenizer.path!r} has no {'/'.join(missing)} pieces that BERT data needs; "
            "retrain it with `python -m data.tokenizer --bert_symbols`."
        )
    return SpecialIds(
        pad=tokenizer.pad_id,
        unk=tokenizer.unk_id,
        bos=tokenizer.bos_id,
        eos=tokenizer.eos_id,
        mask=ids["[MASK]"],
        cls=ids["[CLS]"],
        sep=ids["[SEP]"],
    )


def ordinary_ids(vocab_size: int, specials: SpecialIds) -> np.ndarray:
    """int32[n]: the ids a random replacement draws from (every id but the special ones)."""
    return np.setdiff1d(np.arange(vocab_size, dtype=np.int32), specials.all())


def mask_tokens(
    tokens: np.ndarray,
    maskable: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    random_ids: np.ndarray,
    rate: float = MASK_RATE,
) -> dict[str, np.ndarray]:
    """Applies the BERT rule to int32[rows, length] `tokens`.

    In each row exactly max(1, round(rate * n)) of its n `maskable` positions are chosen (none if
    n = 0). Returns int32[rows, length] arrays:
      tokens: the inputs: chosen positions replaced by `mask_id` (80%), a uniform draw from
        `random_ids` (10%), or left as they were (10%); every other position unchanged.
      targets: the original id at chosen positions, 0 elsewhere.
      weights: 1 at chosen positions, 0 elsewhere.
    """
    maskable = maskable.astype(bool)
    counts = maskable.sum(axis=-1, keepdims=True)
    to_choose = np.where(counts > 0, np.maximum(1, np.round(rate * counts)), 0)
    # A random order of the maskable positions (others sort last); the first `to_choose` win.
    scores = np.where(maskable, rng.random(tokens.shape), 2.0)
    ranks = np.argsort(np.argsort(scores, axis=-1, kind="stable"), axis=-1, kind="stable")
    chosen = ranks < to_choose
    action = rng.random(tokens.shape)
    to_mask = chosen & (action < MASK_TOKEN_FRACTION)
    to_random = chosen & ~to_mask & (action < MASK_TOKEN_FRACTION + RANDOM_TOKEN_FRACTION)
    inputs = np.where(to_mask, mask_id, tokens)
    inputs = np.where(to_random, rng.choice(random_ids, size=tokens.shape), inputs)
    return {
        "tokens": inputs.astype(np.int32),
        "targets": np.where(chosen, tokens, 0).astype(np.int32),
        "weights": chosen.astype(np.int32),
    }


def check_mask_rate(rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise UserError(f"mask_rate must be in (0, 1), got {rate}; BERT uses 0.15.")


def mlm_dataset(
    texts: TextSource,
    tokenizer: Tokenizer,
    options: StreamOptions,
    *,
    length: int,
    mask_rate: float = MASK_RATE,
) -> grain.IterDataset:
    """Masked-LM batches of data shard's share of `texts` (documents, or a prepared split),
    packed as in `packed_rows`.

    Each element is a dict of int32[batch_size, length] arrays:
      tokens: the masked inputs (see `mask_tokens`); 0 on padding.
      targets: original ids at the chosen positions, 0 elsewhere.
      weights: 1 at the chosen positions, 0 elsewhere (the loss mask).
      segment_ids, positions: as `packed_dataset` (segments never attend to each other).
      token_types: all 0 (one sentence type).
    Chosen positions are the row's real tokens that are no special id (so never padding, the EOS
    that ends each document, or a [MASK]/[CLS]/[SEP] written in the text). The masks are a
    function of (seed, shard, batch number), so the stream is deterministic and
    `iter(ds).get_state()` (JSON) resumes it exactly; repeat=False keeps the padded last batch.
    """
    check_mask_rate(mask_rate)
    specials = special_ids(tokenizer)
    all_special, random_ids = specials.all(), ordinary_ids(tokenizer.vocab_size, specials)
    ds = packed_rows(texts, tokenizer, options, length=length)

    def mask(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = batch["tokens"]
        maskable = (batch["segment_ids"] > 0) & ~np.isin(tokens, all_special)
        masked = mask_tokens(
            tokens, maskable, rng, mask_id=specials.mask, random_ids=random_ids, rate=mask_rate
        )
        return {
            **masked,
            "segment_ids": batch["segment_ids"],
            "positions": batch["positions"],
            "token_types": np.zeros_like(tokens),
        }

    return ds.random_map(mask, seed=derived_seed(options.seed, options.shard_index, "mlm"))
