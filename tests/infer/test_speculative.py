"""Speculative decoding: greedy output equals the target's own greedy decoding token for token
whatever the draft; sampled output is distributed exactly as the target's sampling (chi-square
over thousands of seeds, vectorised, with the power to reject a wrong acceptance rule); the CLI
writes the same tokens plus the stats and refuses bad input in one line, exit 2."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats  # a dependency of jax

from infer.engine.engine import generate
from infer.engine.load import Loaded, load
from infer.engine.sampling import Sampling, sample
from infer.engine.speculative import (
    _decode,
    _prefill,
    accept,
    distribution,
    draw,
    speculative_generate,
)
from model import sharding
from model.config import get_preset
from model.family import build_model, init_inputs
from runtime.errors import UserError
from tests.infer.test_generate import _cli
from train.checkpoint import Checkpointer

PROMPT_TEXT = "def f(x):\n"  # as tests/infer/test_generate.py, so the engine's compile is shared
NEW = 10
SIGNIFICANCE = 1e-4  # of each chi-square test: the chance that a correct rule fails on its seeds


def _noisy(loaded: Loaded, scale: float) -> Loaded:
    """The same model with every param moved by `scale` of its own spread (drawn in numpy:
    nothing to compile) and placed as the original, so both share one compiled program: a
    draft that agrees with the target on some tokens and not on others."""
    rng = np.random.default_rng(0)

    def move(x):
        host = np.asarray(jax.device_get(x))
        noise = scale * host.std() * rng.normal(size=host.shape).astype(host.dtype)
        return jax.device_put(host + noise, x.sharding)

    return Loaded(loaded.config, loaded.model, jax.tree.map(move, loaded.params), loaded.mesh,
                  None)


def _random_model(preset: str, seed: int, **overrides) -> Loaded:
    """A tiny model with random params drawn in numpy (no init program to compile), spread wide
    enough that its next-token distributions are far from uniform and from each other's."""
    cfg = get_preset(preset).replace(**overrides)
    model = build_model(cfg)
    shapes = sharding.unbox(jax.eval_shape(model.init, jax.random.key(0), *init_inputs(cfg)))
    rng = np.random.default_rng(seed)

    def param(path, shape):
        if "norm" in jax.tree_util.keystr(path):
            return np.ones(shape.shape, np.float32)
        return rng.normal(0, 0.15, shape.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(param, shapes)
    return Loaded(cfg, model, params, sharding.make_mesh(""), None)


def _config_dir(path, cfg) -> str:
    """A model directory with config.json alone: enough for what is refused before loading."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    return str(path)


@pytest.fixture(scope="module")
def target(workdir):
    return load(workdir)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    """A model directory (config.json + orbax checkpoint) of another shape than the target's:
    one layer, random params, the target's vocabulary."""
    draft = _random_model("tiny", 5, num_layers=1)
    path = _config_dir(tmp_path_factory.mktemp("draft") / "model", draft.config)
    checkpointer = Checkpointer(path)
    checkpointer.save(0, {"params": draft.params["params"]}, {}, {})
    checkpointer.close()
    return path


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_equals_the_targets_greedy(target, k):
    draft = _noisy(target, 0.1)
    prompt = target.tokenizer.encode(PROMPT_TEXT).tolist()
    eos = target.tokenizer.eos_id  # as the CLI passes it, so the engine compiles once
    expected = generate(target, [prompt], NEW, eos_id=eos)[0]
    assert len(expected) == NEW  # no EOS in it: every round is compared
    out, stats = speculative_generate(target, draft, prompt, NEW, draft_tokens=k, eos_id=eos)
    assert out == expected
    assert 0 < stats["accepted"] < stats["proposed"]  # the draft is sometimes right, not always
    assert stats["proposed"] == k * (stats["target_forward_passes"] - 1)
    assert stats["new_tokens"] == NEW
    assert stats["tokens_per_target_pass"] == NEW / stats["target_forward_passes"]

    same, stats = speculative_generate(target, target, prompt, NEW, draft_tokens=k, eos_id=eos)
    assert same == expected and stats["acceptance_rate"] == 1.0
    # Prefill gives one token, every round k + 1.
    assert stats["target_forward_passes"] == 1 + math.ceil((NEW - 1) / (k + 1))

    stop = expected[6]
    cut, stats = speculative_generate(target, draft, prompt, NEW, draft_tokens=k, eos_id=stop)
    assert cut == expected[:expected.index(stop)]
    assert stats["new_tokens"] == len(cut) + 1  # EOS was generated, not returned


def _chi_square_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Of observed `counts` under `probs` (same shape); cells expected below 5 are pooled, as
    the chi-square approximation needs."""
    probs = probs.ravel().astype(np.float64)
    counts, expected = counts.ravel(), probs / probs.sum() * counts.sum()
    assert counts[expected == 0].sum() == 0, "a token of probability 0 was produced"
    small = (expected < 5) & (expected > 0)
    big = expected >= 5
    observed = np.append(counts[big], counts[small].sum())
    expected = np.append(expected[big], expected[small].sum())
    keep = expected > 0
    return float(scipy_stats.chisquare(observed[keep], expected[keep]).pvalue)


def _power(probs: np.ndarray, wrong: np.ndarray, n: int) -> float:
    """The chi-square statistic expected when n draws come from `wrong` instead of `probs`, over
    the cells `probs` allows (a wrong rule's draws elsewhere fail the test on their own): far
    above the test's critical value means the test rejects that mistake."""
    mask = probs > 0
    return float(n * np.sum((wrong[mask] - probs[mask]) ** 2 / probs[mask]))


def _critical(cells: int) -> float:
    return float(scipy_stats.chi2.isf(SIGNIFICANCE, cells - 1))


# A context-independent toy: 6 tokens, k = 3 draft positions; q puts mass where p has none
# and misses tokens p likes, so both the acceptance ratio and the residual matter.
P_ROWS = np.array([[0.40, 0.25, 0.15, 0.10, 0.10, 0.00],
                   [0.05, 0.05, 0.50, 0.20, 0.10, 0.10],
                   [0.30, 0.30, 0.10, 0.10, 0.10, 0.10],
                   [0.10, 0.10, 0.10, 0.10, 0.20, 0.40]], np.float32)
Q_ROWS = np.array([[0.10, 0.50, 0.00, 0.10, 0.10, 0.20],
                   [0.30, 0.05, 0.05, 0.20, 0.20, 0.20],
                   [0.30, 0.30, 0.10, 0.10, 0.10, 0.10]], np.float32)


@jax.jit
def _one_round(p, q, key):
    """Draft tokens drawn from q, then the acceptance rule: (first emitted token, accepted
    count, the token after the accepted ones)."""
    draft_key, accept_key = jax.random.split(key)
    drafted = jax.vmap(draw)(jax.random.split(draft_key, q.shape[0]), q)
    a, following = accept(p, q, drafted, accept_key)
    return jnp.where(a > 0, drafted[0], following), a, following


def test_acceptance_rule_keeps_the_targets_distribution():
    n = 40_000
    keys = jax.random.split(jax.random.key(1), n)
    first, accepted, _ = jax.vmap(_one_round, (None, None, 0))(P_ROWS, Q_ROWS, keys)
    counts = np.bincount(np.asarray(first), minlength=6)
    assert _chi_square_pvalue(counts, P_ROWS[0]) > SIGNIFICANCE
    # Two wrong rules this test rejects by a wide margin: accepting every draft token (giving
    # q_1), and resampling a rejected token from p_1 instead of the residual.
    overlap = np.minimum(P_ROWS[0], Q_ROWS[0])
    assert _power(P_ROWS[0], Q_ROWS[0], n) > 10 * _critical(6)
    assert _power(P_ROWS[0], overlap + (1 - overlap.sum()) * P_ROWS[0], n) > 10 * _critical(6)
    # d_1 is accepted with probability sum_x min(p(x), q(x)).
    assert abs(np.mean(np.asarray(accepted) > 0) - overlap.sum()) < 0.01

    # A draft equal to the target: every token accepted, the bonus drawn from p_{k+1}.
    _, accepted, bonus = jax.vmap(_one_round, (None, None, 0))(P_ROWS, P_ROWS[:3], keys)
    assert np.all(np.asarray(accepted) == 3)
    assert _chi_square_pvalue(np.bincount(np.asarray(bonus), minlength=6), P_ROWS[3]) \
        > SIGNIFICANCE


def test_one_hot_distributions_accept_the_longest_matching_prefix():
    target_argmax, drafted = np.array([2, 4, 1, 5]), np.array([2, 4, 0])
    p = jax.nn.one_hot(target_argmax, 6)
    q = jax.nn.one_hot(drafted, 6)
    rule = jax.jit(accept)
    for seed in range(5):
        a, following = rule(p, q, jnp.asarray(drafted), jax.random.key(seed))
        assert (int(a), int(following)) == (2, 1)
    a, following = rule(p, jax.nn.one_hot(target_argmax[:3], 6), jnp.asarray(target_argmax[:3]),
                        jax.random.key(0))
    assert (int(a), int(following)) == (3, 5)  # all accepted, then the target's bonus token


@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.7, top_k=3),
                                      Sampling(1.3, top_p=0.8), Sampling(1.0, top_k=5, top_p=0.6)])
def test_distribution_is_what_sample_draws_from(sampling):
    n = 20_000
    logits = jax.random.normal(jax.random.key(2), (1, 8)) * 1.5
    probs = np.asarray(distribution(logits, sampling))[0]
    drawn = sample(jnp.repeat(logits, n, axis=0), jax.random.key(3), sampling)
    assert _chi_square_pvalue(np.bincount(np.asarray(drawn), minlength=8), probs) > SIGNIFICANCE
    greedy = np.asarray(distribution(logits, Sampling()))[0]
    assert greedy[int(sample(logits, jax.random.key(0), Sampling())[0])] == 1 == greedy.sum()


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens):
    return model.apply(params, tokens)


def test_sampled_tokens_follow_the_target_end_to_end():
    """4 tokens, k = 2, with a draft of other random params, over 8,000 seeds vectorised: the pairs
    (t1, t2), (t2, t3), (t3, t4) match the target's exact joint distribution, computed by the
    full forward of every continuation. t2, t3 come from a round's first and second draft
    positions or a resample; t4 is often the bonus token."""
    # One shape for both, so prefill and the exact forward below compile once. GPT-2 style
    # (learned positions) with a context of exactly prompt + new tokens, which the last
    # round's draft tokens run past.
    target, draft = (_random_model("tiny_gpt", seed, vocab_size=8, max_len=9) for seed in (1, 2))
    sampling, prompt, n = Sampling(1.0, top_k=6), [3, 1, 4, 1, 5], 8_000
    ids = np.asarray([prompt], np.int32)
    logits, target_cache = _prefill(target.model, target.params, ids)
    _, draft_cache = _prefill(draft.model, draft.params, ids)
    run = jax.jit(jax.vmap(lambda key: _decode(
        target.model, draft.model, target.params, draft.params, logits, target_cache,
        draft_cache, jnp.int32(prompt[-1]), key, jnp.int32(-1), max_new_tokens=4, k=2,
        sampling=sampling)[0][:4]))
    tokens = np.asarray(run(jax.random.split(jax.random.key(4), n)))

    def conditionals(loaded):
        """[t1, t2, t3, i, 8]: next-token distributions after the prompt + t1..t_i."""
        prefixes = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
        seqs = np.concatenate([np.tile(prompt, (512, 1)), prefixes], 1).astype(np.int32)
        logits = _forward(loaded.model, loaded.params, seqs)[:, len(prompt) - 1:]
        return np.asarray(distribution(logits.reshape(-1, 8), sampling)).reshape(8, 8, 8, 4, 8)

    c = conditionals(target)
    exact = (c[0, 0, 0, 0][:, None, None, None] * c[:, 0, 0, 1][:, :, None, None]
             * c[:, :, 0, 2][:, :, :, None] * c[:, :, :, 3])  # [t1, t2, t3, t4]
    # The "accept every draft token" mistake: t2 from the draft, given the target's t1.
    wrong = c[0, 0, 0, 0][:, None] * conditionals(draft)[:, 0, 0, 1]
    assert _power(exact.sum((2, 3)), wrong, n) > 10 * _critical(64)
    for axes, pair in (((2, 3), (0, 1)), ((0, 3), (1, 2)), ((0, 1), (2, 3))):
        counts = np.zeros((8, 8))
        np.add.at(counts, (tokens[:, pair[0]], tokens[:, pair[1]]), 1)
        assert _chi_square_pvalue(counts, exact.sum(axes)) > SIGNIFICANCE, pair


def test_refuses_what_it_cannot_decode():
    """Refused from the configs, before any params are touched."""
    def config_only(cfg):
        return Loaded(cfg, None, None, None, None)

    tiny = config_only(get_preset("tiny"))
    with pytest.raises(UserError, match="vocabulary"):
        speculative_generate(tiny, config_only(tiny.config.replace(vocab_size=256)), [1], 4)
    with pytest.raises(UserError, match="decoder-only"):
        speculative_generate(tiny, config_only(get_preset("tiny_t5").replace(vocab_size=512)),
                             [1], 4)
    with pytest.raises(UserError, match="--draft_tokens must be >= 1"):
        speculative_generate(tiny, tiny, [1], 4, draft_tokens=0)
    with pytest.raises(UserError, match="exceeds the model's context"):
        speculative_generate(tiny, tiny, [1] * 100, 100)


def test_cli_draft_writes_the_same_tokens_and_the_stats(workdir, draft_dir, target, tmp_path):
    out = tmp_path / "gen.json"
    result = _cli(f"--checkpoint={workdir}", f"--draft={draft_dir}", "--draft_tokens=3",
                  f"--prompt={PROMPT_TEXT}", f"--max_new_tokens={NEW}", "--temperature=0",
                  f"--json={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    prompt = target.tokenizer.encode(PROMPT_TEXT).tolist()
    assert record["tokens"] == generate(target, [prompt], NEW, eos_id=target.tokenizer.eos_id)
    spec = record["speculative"]  # the 1-layer draft's tokens hardly ever pass
    assert spec["proposed"] == 3 * (spec["target_forward_passes"] - 1)
    assert 0 <= spec["accepted"] <= spec["proposed"] and spec["new_tokens"] == NEW
    assert spec["acceptance_rate"] == spec["accepted"] / spec["proposed"]
    line = (f"speculative: {spec['accepted']}/{spec['proposed']} draft tokens accepted "
            f"({100 * spec['acceptance_rate']:.1f}%), {spec['tokens_per_target_pass']:.1f} "
            f"tokens per target pass")
    assert line in result.stderr.splitlines()
    assert result.stdout.startswith(PROMPT_TEXT + record["text"][0])


@pytest.mark.parametrize("case,message", [
    ("draft_tokens", "--draft_tokens must be >= 1"),
    ("vocab", "vocabulary (256 tokens) differs"),
    ("beams", "does not combine with --num_beams>1"),
    ("seq2seq", "decoder-only"),
])
def test_cli_bad_draft_exit_2(workdir, tmp_path, case, message):
    checkpoint, draft, extra = workdir, workdir, []
    if case == "draft_tokens":
        extra = ["--draft_tokens=0"]
    elif case == "vocab":
        draft = _config_dir(tmp_path / "small", get_preset("tiny").replace(vocab_size=256))
    elif case == "beams":
        extra = ["--num_beams=2"]
    else:
        checkpoint = _config_dir(tmp_path / "t5", get_preset("tiny_t5"))
    result = _cli(f"--checkpoint={checkpoint}", f"--draft={draft}", "--prompt=x",
                  f"--json={tmp_path}/o.json", *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o.json").exists()
