"""python -m train.plan as users run it, each in its own process so that the fake device count
is the command's own: llama_7b on 8 and on 64 devices prints memory per device (params and
optimizer state at 12 bytes a param, split by fsdp) and a roofline, a step that does not fit is
refused in one line with a hint, and bad inputs are one line, exit 2."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from model.config import get_preset
from train.plan_report import matmul_flops, parse_topology

# The real llama_7b shapes; a short sequence and a small batch keep each compile to seconds.
LLAMA = ["--preset=llama_7b", "--seq_len=256"]


def _plan(*args):
    return subprocess.run([sys.executable, "-m", "train.plan", *args], capture_output=True,
                          text=True, timeout=600, check=False, stdin=subprocess.DEVNULL)


def _error_line(result) -> str:
    """The one error line, checked to be the only one and the last thing on stderr."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def llama_plans(tmp_path_factory):
    """llama_7b planned on 8 devices (fsdp=8) with a memory limit below its need, and on 64
    (fsdp=64) for h100x64; (result, JSON numbers) of each."""
    root = tmp_path_factory.mktemp("plan")
    runs = {
        8: ["--mesh=fsdp=8", "--num_devices=8", "--batch_size=8", "--memory_per_device=8"],
        64: ["--mesh=fsdp=64", "--topology=h100x64", "--batch_size=64"],
    }
    out = {}
    for n, args in runs.items():
        path = root / f"plan_{n}.json"
        result = _plan(*LLAMA, *args, f"--json={path}")
        out[n] = (result, json.loads(path.read_text()) if path.exists() else None)
    return out


def test_llama_7b_state_per_device_is_12_bytes_a_param_over_fsdp(llama_plans):
    n_params = get_preset("llama_7b").num_params()
    per_device = {}
    for n, (result, numbers) in llama_plans.items():
        assert numbers is not None, result.stderr
        for row in ("params", "optimizer state", "activations and temporaries", "total"):
            assert any(line.strip().startswith(row) and "GiB" in line
                       for line in result.stdout.splitlines()), result.stdout
        assert numbers["devices"] == n and numbers["num_params"] == n_params
        # fp32 params (4 bytes) and AdamW's two fp32 moments (8 bytes), split n ways by fsdp.
        state = numbers["params_bytes"] + numbers["optimizer_bytes"]
        assert state == pytest.approx(n_params * 12 / n, rel=0.01)
        assert state == pytest.approx(7e9 * 12 / n, rel=0.05)
        assert numbers["temp_bytes"] > 0 and numbers["total_bytes"] > state
        # 6N + attention of 256-token rows; the traced matmuls are that, give or take the
        # attention terms the formula rounds.
        assert numbers["program_flops"] == pytest.approx(numbers["model_flops"], rel=0.05)
        per_device[n] = state
    assert per_device[64] == pytest.approx(per_device[8] / 8, rel=0.01)


def test_llama_7b_on_64_h100s_fits_and_gets_a_roofline(llama_plans):
    result, numbers = llama_plans[64]
    assert result.returncode == 0, result.stderr
    assert "roofline on h100x64" in result.stdout and "fits" in result.stdout
    assert numbers["fits"] is True and numbers["limit_bytes"] == 80 * 2**30
    roof = numbers["roofline"]
    # Compute-bound: the step's FLOPs over 64 devices at 989 TFLOP/s each.
    assert roof["bound"] == "compute"
    assert roof["step_s"] == pytest.approx(numbers["program_flops"] / 64 / 989e12, rel=1e-6)


def test_llama_7b_over_the_memory_limit_is_one_line_exit_2_after_the_table(llama_plans):
    result, numbers = llama_plans[8]
    assert result.returncode == 2, result.stderr
    assert "total" in result.stdout and "DOES NOT FIT" in result.stdout
    # Params and optimizer state alone (9.4 GiB) exceed 8 GiB: the hint says to shard wider.
    assert "hint: params and optimizer state alone" in result.stdout
    error = _error_line(result)
    assert "GiB a device but --memory_per_device allows 8.00 GiB" in error
    assert numbers["fits"] is False  # the JSON is written before the refusal


def test_activations_over_the_limit_get_the_remat_full_figure(tmp_path):
    path = tmp_path / "tiny.json"
    # Replicated on data=2, the 1.6 MiB of state fits in 2 MiB; the activations do not.
    result = _plan("--preset=tiny", "--seq_len=64", "--batch_size=8", "--num_devices=2",
                   "--memory_per_device=0.002", f"--json={path}")
    assert result.returncode == 2, result.stderr
    assert "hint: with --remat=full the step needs" in result.stdout
    assert "hint: activations and temporaries take" in result.stdout
    assert "allows 0.00 GiB" in _error_line(result)
    numbers = json.loads(path.read_text())
    assert numbers["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    # Remat recomputes the forward pass: fewer temporaries, more matmul FLOPs.
    remat = numbers["with_remat_full"]
    assert remat["temp_bytes"] < numbers["temp_bytes"]
    assert remat["program_flops"] > numbers["program_flops"]


@pytest.mark.parametrize("args, message", [
    (["--mesh=fsdp=16", "--num_devices=8"], "uses 16 devices but there are 8"),
    (["--mesh=data=2,fsdp=8", "--topology=h100x8"], "this plan is for 8 devices"),
    (["--topology=h999x8"], "unknown --topology='h999x8'"),
    (["--topology=v5p-63"], "multiple of 2"),
    (["--topology=h100x0"], "has no devices"),
    (["--num_devices=8", "--topology=h100x64"], "has 64 devices"),
    (["--memory_per_device=-1"], "--memory_per_device must be a positive number"),
    (["--num_devices=-2"], "--num_devices must be positive"),
    (["--num_devices=8", "--dcn_mesh=tensor=2"], "puts tensor across hosts"),
    (["--num_devices=8", "--dcn_mesh=data=3"], "cannot share 8 devices"),
    (["--num_devices=8", "--batch_size=16", "--data_shards=3"],
     "--batch_size=16 must be divisible by --data_shards=3"),
])
def test_bad_inputs_are_one_line_exit_2(args, message):
    result = _plan("--preset=llama_7b", *args)
    assert result.returncode == 2, result.stderr
    assert message in _error_line(result)
    assert result.stdout == ""


def test_data_shards_plan_as_one_stream(tmp_path):
    # The shard count changes which documents feed each row, never a batch's shape: --data_shards
    # plans the same step (it used to stop on "batch_size >= 1, got ... and 0").
    path = tmp_path / "shards.json"
    result = _plan("--preset=tiny", "--seq_len=64", "--batch_size=8", "--num_devices=2",
                   "--data_shards=2", f"--json={path}")
    assert result.returncode == 0, result.stderr
    numbers = json.loads(path.read_text())
    assert numbers["devices"] == 2 and numbers["tokens_per_step"] == 8 * 64


def test_topology_names():
    assert parse_topology("h100x64").count == 64
    assert parse_topology("H100x8").memory_bytes == 80 * 2**30
    assert parse_topology("v5p-64").count == 32  # TensorCores, two a chip
    assert parse_topology("v5e-16").count == 16
    assert parse_topology("cpu").platform == "cpu"
    assert parse_topology("a100").count is None
    assert parse_topology("").platform is None


def test_matmul_flops_counts_every_iteration_of_a_scan():
    def layers(x, ws):
        return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0].sum()

    x, ws = jnp.ones((16, 32)), jnp.ones((5, 32, 32))
    forward = jax.make_jaxpr(layers)(x, ws).jaxpr
    assert matmul_flops(forward) == 5 * 2 * 16 * 32 * 32
    # The backward pass adds two matmuls of the same size per layer (input and weight grads).
    backward = jax.make_jaxpr(jax.grad(layers, argnums=1))(x, ws).jaxpr
    assert matmul_flops(backward) == 3 * 5 * 2 * 16 * 32 * 32
