"""Multi-host pieces that need no second process: which launch each cluster environment means
(fake environments, no cluster), what reaches jax.distributed.initialize, the --dcn_mesh layout
on fake hosts, the per-host data state of a checkpoint, and the local launcher's commands."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

from model import sharding
from runtime.errors import UserError
from train import distributed, launch_local
from train.distributed import Launch
from train.flags import LAUNCH_FLAGS, TrainConfig, flagfile_text

SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[001-004]", "SLURM_NTASKS": "4",
         "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "1(x4)"}
JOBSET = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3",
          "MESHLM_COORDINATOR": "meshlm-workers-0-0.meshlm:1234", "MESHLM_NUM_PROCESSES": "4"}


@pytest.mark.parametrize("name,flags,environ,expected", [
    ("a laptop", {}, {}, None),
    ("explicit flags", {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                        "process_id": 1}, {}, Launch("flags", "10.0.0.1:1234", 2, 1)),
    ("one process named", {"coordinator_address": "h:1", "num_processes": 1, "process_id": 0},
     {}, None),
    ("--distributed=false in SLURM", {"mode": "false"}, SLURM, None),
    ("--distributed=true alone: jax looks", {"mode": "true"}, {}, Launch("jax")),
    ("SLURM, a task per node", {}, SLURM, Launch("slurm", local_device_ids=[])),
    ("SLURM, a task per GPU", {}, {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
                                   "SLURM_NTASKS": "16"}, Launch("slurm")),
    ("SLURM, one task", {}, {**SLURM, "SLURM_NTASKS": "1"}, None),
    ("sbatch script outside srun", {}, {k: v for k, v in SLURM.items()
                                        if k != "SLURM_STEP_NODELIST"}, None),
    ("SLURM fills what flags leave out", {"coordinator_address": "node001:9999"}, SLURM,
     Launch("slurm", "node001:9999", local_device_ids=[])),
    ("Kubernetes JobSet", {}, JOBSET, Launch("kubernetes", JOBSET["MESHLM_COORDINATOR"], 4, 3)),
    ("Kubernetes pod, no multi-host env", {}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                               "JOB_COMPLETION_INDEX": "0"}, None),
    ("MESHLM_PROCESS_ID beats the job index", {}, {**JOBSET, "MESHLM_PROCESS_ID": "1"},
     Launch("environment", JOBSET["MESHLM_COORDINATOR"], 4, 1)),
    ("flags beat the environment", {"process_id": 0}, JOBSET,
     Launch("flags", JOBSET["MESHLM_COORDINATOR"], 4, 0)),
    ("TPU pod (GKE)", {}, {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3", "TPU_WORKER_ID": "1"},
     Launch("tpu")),
    ("single TPU host", {}, {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, None),
    ("TPU multislice", {}, {"MEGASCALE_COORDINATOR_ADDRESS": "t0:8080"}, Launch("tpu")),
])
def test_detect(name, flags, environ, expected):
    flags = {"mode": "auto", **flags}
    assert distributed.detect(**flags, environ=environ) == expected, name


@pytest.mark.parametrize("flags,environ,message", [
    ({"mode": "maybe"}, {}, "use auto, true or false"),
    ({"mode": "false", "process_id": 1}, {}, "--distributed=false contradicts --process_id"),
    ({"coordinator_address": "localhost:1234"}, {},
     "also needs --num_processes and --process_id"),
    ({"coordinator_address": "node001"}, {}, "must be host:port"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {},
     "--process_id=2 must be in [0, 2)"),
    ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0}, {}, "at least 1"),
    ({}, {"MESHLM_COORDINATOR": "h:1", "JOB_COMPLETION_INDEX": "1"}, "--num_processes"),
    ({}, {**JOBSET, "MESHLM_NUM_PROCESSES": "four"}, "MESHLM_NUM_PROCESSES='four'"),
])
def test_detect_refuses_bad_combinations_in_one_line(flags, environ, message):
    with pytest.raises(UserError) as e:
        distributed.detect(**{"mode": "auto", **flags}, environ=environ)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_start_passes_the_launch_to_jax_and_reports_its_failure(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    distributed.start("auto", "localhost:1234", 2, 0, timeout_s=5)
    assert calls == [{"coordinator_address": "localhost:1234", "num_processes": 2,
                      "process_id": 0, "local_device_ids": None, "initialization_timeout": 5}]
    assert distributed.start("auto") is None and len(calls) == 1  # nothing to join here
    # jax would abort the process, not raise, if process 0 never answers: checked first.
    port = launch_local.free_port()
    with pytest.raises(UserError, match=f"could not reach the coordinator localhost:{port}"):
        distributed.start("auto", f"localhost:{port}", 2, 1, timeout_s=1)
    assert len(calls) == 1

    def fail(**kw):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", fail)
    with pytest.raises(UserError, match="could not join the multi-host run .*coordinator_addr"):
        distributed.start("true")


def test_launch_flags_stay_out_of_config_and_flag_files():
    cfg = TrainConfig(workdir="w", dcn_mesh="data=2", coordinator_address="h:1",
                      num_processes=2, process_id=1, distributed="true")
    assert set(LAUNCH_FLAGS) == {"distributed", "coordinator_address", "num_processes",
                                 "process_id"}
    assert not set(LAUNCH_FLAGS) & set(cfg.to_flags())
    text = flagfile_text(cfg)
    assert "--dcn_mesh=data=2" in text and "process_id" not in text and "coordinator" not in text


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"
    slice_index: int = 0


def test_dcn_mesh_puts_only_its_axes_across_hosts():
    devices = [FakeDevice(i, i // 4) for i in range(16)]  # 4 hosts x 4 devices
    grid = sharding.hybrid_grid("data=2,tensor=-1", "data=2,fsdp=2", devices)
    hosts = np.vectorize(lambda d: d.process_index)(grid)
    assert hosts.shape == (4, 2, 2)  # data 2x2, fsdp 1x2, tensor 2x1
    assert (hosts == hosts[:, :, :1]).all()  # tensor never leaves a host
    assert (hosts[:2, 0] == 0).all() and (hosts[2:, 1] == 3).all()  # data and fsdp do


@pytest.mark.parametrize("mesh,dcn,message", [
    ("", "data=3", "--dcn_mesh='data=3' uses 3 hosts but there are 4"),
    ("data=3", "data=4", "--mesh='data=3' uses 3 devices per host but there are 4"),
    ("", "tensor=x", "--dcn_mesh='tensor=x': size of 'tensor' must be an integer"),
    ("", "data=-1,fsdp=-1", "--dcn_mesh='data=-1,fsdp=-1': only one axis may be -1"),
])
def test_dcn_mesh_errors(mesh, dcn, message):
    devices = [FakeDevice(i, i // 4) for i in range(16)]
    with pytest.raises(UserError) as e:
        sharding.hybrid_grid(mesh, dcn, devices)
    assert str(e.value).startswith(message)


def test_dcn_mesh_on_one_process():
    mesh = sharding.make_mesh("data=2,tensor=-1", dcn="data=1")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(UserError, match="uses 2 hosts but there are 1"):
        sharding.make_mesh("", dcn="data=2")
    with pytest.raises(UserError, match="same number of devices on every host"):
        sharding.hybrid_grid("", "data=2", [FakeDevice(i, int(i >= 6)) for i in range(8)])


def test_checkpoint_data_item_holds_every_shard_state():
    state = {"parent_state": {"next_index": 5}}
    other = {"parent_state": {"next_index": 7}}
    saved = distributed.gather_data_state(state)
    assert saved == {"data_shards": 1, "shards": [state]}
    assert distributed.local_data_state(saved, 1) == state
    assert distributed.local_data_state(saved, 2) is None  # another split of the data
    # One process reading two shards keeps both places; one process of one shard its own.
    two = distributed.gather_data_state({"shards": [state, other]})
    assert two == {"data_shards": 2, "shards": [state, other]}
    assert distributed.local_data_state(two, 2) == {"shards": [state, other]}
    # Formats written before: one process's state, and one state per process (one shard each).
    assert distributed.local_data_state(state, 1) == state
    legacy = {"process_count": 2, "processes": [state, other]}
    assert distributed.local_data_state(legacy, 2) == {"shards": [state, other]}
    assert distributed.local_data_state(legacy, 1) is None


def test_launcher_sets_devices_and_refuses_flags_it_owns():
    env = launch_local.child_env(4, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                                                  "--xla_dump_to=/tmp/x"})
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4"
    assert env["JAX_PLATFORMS"] == "cpu" and env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
    cmds = launch_local.commands(["--flagfile=f"], 2, 5555)
    assert cmds[1][-5:] == ["--flagfile=f", "--distributed=true",
                            "--coordinator_address=localhost:5555", "--num_processes=2",
                            "--process_id=1"]
    with pytest.raises(UserError, match="launch_local sets --process_id itself"):
        launch_local.commands(["--process_id=1"], 2, 5555)
    with pytest.raises(UserError, match="launch_local sets --distributed itself"):
        launch_local.commands(["--nodistributed"], 2, 5555)


@pytest.mark.parametrize("args,message", [
    ([], "pass the training flags after --"),
    (["--num_processes=0", "--", "--steps=1"], "at least 1"),
    (["--", "--num_processes=3"], "launch_local sets --num_processes itself"),
])
def test_launcher_bad_input_is_one_line_exit_2(args, message):
    result = subprocess.run([sys.executable, "-m", "train.launch_local", *args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
