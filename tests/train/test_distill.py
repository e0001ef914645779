"""Knowledge distillation (--objective=distill): the loss is Hinton et al.'s formula, a smaller
student moves towards a trained teacher of either family, a resumed run equals an uninterrupted
one, and a teacher that does not fit the student is refused in one line before anything is
written."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import get_preset
from runtime.errors import UserError
from train import objectives
from train.flags import TrainConfig
from train.loop import train
from train.prepare import prepare

TEACHER = TrainConfig(vocab_size=512, seq_len=32, batch_size=8, learning_rate=3e-3,
                      warmup_steps=2, schedule="constant", steps=12, log_every=12, eval_every=0,
                      save_every=12)
# Half the teacher's depth and width. Warmup from 0: step 1 updates nothing, so its eval is that
# of the initial student.
STUDENT = TEACHER.replace(objective="distill", vocab_size=None, num_layers=1, d_model=32,
                          num_heads=2, num_kv_heads=2, mlp_dim=64, steps=8, log_every=1,
                          eval_every=1, eval_batches=2, save_every=4)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def compile_once(tmp_path_factory):
    """One persistent compilation cache for the module: a resumed run compiles nothing anew."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = [getattr(jax.config, name) for name in names]
    for name, value in zip(names, (str(tmp_path_factory.mktemp("jax_cache")), 0, 0),
                           strict=True):
        jax.config.update(name, value)
    yield
    for name, value in zip(names, before, strict=True):
        jax.config.update(name, value)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, compile_once):
    """A tiny decoder (clm) and a tiny BERT (mlm), each trained a few steps."""
    out = {}
    for family, preset, objective in (("decoder", "tiny", "clm"), ("encoder", "tiny_bert", "mlm")):
        cfg = TEACHER.replace(workdir=str(tmp_path_factory.mktemp(family)), preset=preset,
                              objective=objective)
        train(cfg)
        out[family] = cfg.workdir
    return out


@pytest.fixture(scope="module")
def students(tmp_path_factory, teachers):
    """A distilled student per family: {family: its TrainConfig} (trained when first asked)."""
    made = {}

    def student(family):
        if family not in made:
            preset = {"decoder": "tiny", "encoder": "tiny_bert"}[family]
            cfg = STUDENT.replace(workdir=str(tmp_path_factory.mktemp(f"student_{family}")),
                                  preset=preset, teacher=teachers[family])
            train(cfg)
            made[family] = cfg
        return made[family]

    return student


# The formula, on hand-made logits.

def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(student, teacher, targets, weights, temperature, alpha):
    """Hinton et al. 2015 in numpy: alpha T^2 KL(p_T || q_T) + (1 - alpha) CE, summed."""
    p = _np_log_softmax(teacher / temperature)
    q = _np_log_softmax(student / temperature)
    kl = (np.exp(p) * (p - q)).sum(-1)
    ce = -np.take_along_axis(_np_log_softmax(student), targets[..., None], -1)[..., 0]
    return ((alpha * temperature**2 * kl + (1 - alpha) * ce) * weights).sum(), weights.sum()


def _given(model, params, batch):
    """A `predict` that returns the logits it is handed as params."""
    return params, batch["targets"], batch["weights"]


@pytest.mark.parametrize("temperature,alpha", [(2.0, 0.5), (1.0, 1.0), (4.0, 0.3), (0.5, 0.0)])
def test_distill_loss_is_the_formula(temperature, alpha):
    rng = np.random.default_rng(0)
    student = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    teacher = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (2, 5)).astype(np.int32)
    weights = (rng.random((2, 5)) < 0.7).astype(np.int32)
    batch = {"targets": targets, "weights": weights, "teacher_logits": teacher}
    total, count = objectives.distill(None, jnp.asarray(student), batch, None, _given,
                                      temperature=temperature, alpha=alpha)
    want_total, want_count = _reference(student, teacher, targets, weights, temperature, alpha)
    np.testing.assert_allclose(float(total), want_total, rtol=1e-5)
    assert float(count) == want_count

    stats = objectives.distill_stats(None, jnp.asarray(student), batch, _given, "acc")
    np.testing.assert_allclose(float(stats["loss"][0]),  # plain CE: alpha 0
                               _reference(student, teacher, targets, weights, 1.0, 0.0)[0],
                               rtol=1e-5)
    np.testing.assert_allclose(float(stats["distill_kl"][0]),  # KL at T = 1: alpha 1, T 1
                               _reference(student, teacher, targets, weights, 1.0, 1.0)[0],
                               rtol=1e-5)
    accuracy = ((student.argmax(-1) == targets) * weights).sum()
    assert float(stats["acc"][0]) == accuracy


class _Fixed:
    """A "model" whose logits are its params: clm's own row handling, no network to compile."""

    def apply(self, variables, tokens, *rest):
        return variables["params"]


def test_alpha_zero_is_the_clm_loss():
    rng = np.random.default_rng(1)
    segments = np.array([[1] * 9 + [2] * 6 + [0] * 2, [1] * 17], np.int32)
    positions = np.concatenate([np.arange(9), np.arange(6), [0, 0]])
    batch = {"tokens": rng.integers(3, 64, (2, 17)).astype(np.int32), "segment_ids": segments,
             "positions": np.stack([positions, np.arange(17)]).astype(np.int32),
             "teacher_logits": rng.normal(0, 2, (2, 16, 64)).astype(np.float32)}
    student = jnp.asarray(rng.normal(0, 2, (2, 16, 64)).astype(np.float32))
    want = objectives.clm(_Fixed(), student, batch, None)
    got = objectives.distill(_Fixed(), student, batch, None, objectives.clm_predictions,
                             alpha=0.0)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    # Document starts and padding are not predicted, by either.
    assert float(got[1]) == float(want[1]) == 9 - 1 + 6 - 1 + 16
    stats = objectives.distill_stats(_Fixed(), student, batch, objectives.clm_predictions)
    assert set(stats) == {"loss", "distill_kl"}  # clm reports no accuracy
    np.testing.assert_allclose(float(stats["loss"][0]), float(want[0]), rtol=1e-6)


# End to end: the loop, the teacher's logits on the mesh, checkpoints.

@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_student_moves_towards_its_teacher(family, students, teachers):
    cfg = students(family)
    lines = _metrics(cfg.workdir)
    assert [m["step"] for m in lines] == list(range(1, 9))
    assert lines[0]["learning_rate"] == 0.0  # step 1's eval is of the initial student
    kl = [m["distill_kl"] for m in lines]
    print(f"{family}: distill_kl {kl[0]:.4f} -> {kl[-1]:.4f}, eval_loss "
          f"{lines[0]['eval_loss']:.4f} -> {lines[-1]['eval_loss']:.4f}")
    assert kl[-1] < 0.8 * kl[0] and lines[-1]["eval_loss"] < lines[0]["eval_loss"]
    if family == "encoder":
        assert all(0.0 <= m["mlm_accuracy"] <= 1.0 for m in lines)
    # The student trained with the teacher's tokenizer and vocabulary, at half its width.
    with open(os.path.join(teachers[family], "tokenizer.model"), "rb") as f:
        teacher_tokenizer = f.read()
    with open(os.path.join(cfg.workdir, "tokenizer.model"), "rb") as f:
        assert f.read() == teacher_tokenizer
    with open(os.path.join(cfg.workdir, "config.json")) as f:
        config = json.load(f)
    assert config["flags"]["teacher"] == teachers[family]
    assert config["model"]["family"] == family
    assert config["model"]["vocab_size"] == 512 and config["model"]["d_model"] == 32


def test_resume_continues_bit_exactly(students, tmp_path):
    """The decoder student's run resumed from its step-4 checkpoint logs what it logged."""
    cfg = students("decoder")
    resumed = cfg.replace(workdir=str(tmp_path / "resumed"))
    shutil.copytree(cfg.workdir, resumed.workdir)
    shutil.rmtree(os.path.join(resumed.workdir, "checkpoints", "8"))
    train(resumed)
    straight, again = _metrics(cfg.workdir), _metrics(resumed.workdir)
    assert len(again) == 8
    for key in ("loss", "grad_norm", "eval_loss", "distill_kl"):
        assert [m[key] for m in again] == [m[key] for m in straight], key


# Bad inputs: one line, nothing written.

def _fake_teacher(path, preset, files_from=None):
    """A config.json of the preset (vocab 512), and `files_from`'s tokenizer; no checkpoint."""
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model": get_preset(preset).replace(vocab_size=512).to_dict()}, f)
    if files_from:
        shutil.copy(os.path.join(files_from, "tokenizer.model"), path)
    return str(path)


@pytest.mark.parametrize("case,flags,message", [
    ("no teacher", {}, "--objective=distill needs --teacher"),
    ("not a run", {"teacher": "EMPTY"}, "has no config.json"),
    ("missing", {"teacher": "NOWHERE"}, "nowhere does not exist"),
    ("encoder_decoder", {"teacher": "T5", "preset": "tiny_t5"}, "of the encoder_decoder family"),
    ("vocab", {"teacher": "DECODER", "vocab_size": 256}, "differs from the teacher's 512"),
    ("family", {"teacher": "DECODER", "preset": "tiny_t5"}, "distill into a student of the"),
    ("alpha", {"teacher": "DECODER", "distill_alpha": 1.5}, "--distill_alpha must be in [0, 1]"),
    ("temperature", {"teacher": "DECODER", "distill_temperature": 0.0},
     "--distill_temperature must be positive"),
    ("teacher without distill", {"teacher": "DECODER", "objective": "clm"},
     "read only by --objective=distill"),
    ("no tokenizer", {"teacher": "CONFIG_ONLY"}, "has no tokenizer files"),
    ("no checkpoint", {"teacher": "NO_CHECKPOINT"}, "no checkpoints/ directory there"),
])
def test_bad_teacher_is_one_line(case, flags, message, teachers, tmp_path):
    os.makedirs(tmp_path / "empty")
    paths = {"EMPTY": str(tmp_path / "empty"), "NOWHERE": str(tmp_path / "nowhere"),
             "T5": _fake_teacher(tmp_path / "t5", "tiny_t5"), "DECODER": teachers["decoder"],
             "CONFIG_ONLY": _fake_teacher(tmp_path / "config_only", "tiny"),
             "NO_CHECKPOINT": _fake_teacher(tmp_path / "no_ckpt", "tiny", teachers["decoder"])}
    if "teacher" in flags:
        flags = {**flags, "teacher": paths[flags["teacher"]]}
    cfg = STUDENT.replace(workdir=str(tmp_path / "run"), **flags)
    with pytest.raises(UserError) as error:
        prepare(cfg)
    assert message in str(error.value) and "\n" not in str(error.value), case
    assert not os.path.exists(cfg.workdir)
