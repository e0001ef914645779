"""Multi-host runs: whether this process is one of many (flags, then the environment a scheduler
sets), `jax.distributed.initialize()` before any device is touched, and the few things hosts must
agree on or share (a barrier, process 0's bytes, every host's data-iterator position).

Detection, in order (docs/multi-host.md has the recipes):
  flags        --coordinator_address, --num_processes, --process_id
  environment  MESHLM_COORDINATOR (host:port), MESHLM_NUM_PROCESSES, MESHLM_PROCESS_ID; the
               process id falls back to JOB_COMPLETION_INDEX (Kubernetes indexed Job / JobSet)
  SLURM        an `srun` step with several tasks: jax reads SLURM_JOB_ID, SLURM_STEP_NODELIST,
               SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID itself
  TPU          TPU_WORKER_HOSTNAMES naming several hosts, or MEGASCALE_COORDINATOR_ADDRESS
               (multislice): jax reads those (and the TPU metadata server) itself
--distributed=true also lets jax try what it alone knows (Open MPI, a Cloud TPU VM's metadata).
"""

import dataclasses
import json
import os
import re
import socket
import time
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from data.shards import host_shards, host_state, shard_states
from model import sharding
from runtime.errors import UserError

MODES = ("auto", "true", "false")
ENV_COORDINATOR = "MESHLM_COORDINATOR"
ENV_NUM_PROCESSES = "MESHLM_NUM_PROCESSES"
ENV_PROCESS_ID = "MESHLM_PROCESS_ID"
ENV_JOB_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an indexed Job
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a multi-host run; a None field is left to jax's own detection."""

    source: str  # what said so: flags, environment, kubernetes, slurm, tpu, jax
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    # [] keeps every local device visible: jax otherwise gives each SLURM task on a GPU node one
    # device (SLURM_LOCALID), which is wrong for one task per node driving all its GPUs.
    local_device_ids: list[int] | None = None

    def kwargs(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "source"}

    def describe(self) -> str:
        known = [f"{k}={v}" for k, v in self.kwargs().items() if v not in (None, [])]
        return f"{self.source}: {', '.join(known)}" if known else self.source


def detect(mode: str = "auto", coordinator_address: str = "", num_processes: int | None = None,
           process_id: int | None = None,
           environ: Mapping[str, str] = os.environ) -> Launch | None:
    """The launch the flags and `environ` describe; None for a single-process run."""
    mode = str(mode).strip().lower()
    if mode not in MODES:
        raise UserError(f"--distributed={mode!r}: use auto, true or false")
    given = [f"--{name}" for name, value in (("coordinator_address", coordinator_address),
                                             ("num_processes", num_processes),
                                             ("process_id", process_id))
             if value not in ("", None)]
    if mode == "false":
        if given:
            raise UserError(f"--distributed=false contradicts {' and '.join(given)}; drop one")
        return None
    coordinator = coordinator_address or environ.get(ENV_COORDINATOR, "")
    count = num_processes if num_processes is not None else _env_int(environ, ENV_NUM_PROCESSES)
    index = process_id
    if index is None:
        index = _env_int(environ, ENV_PROCESS_ID)
    if index is None:
        index = _env_int(environ, ENV_JOB_INDEX)
    if coordinator or count is not None or given:
        source = "flags" if given else ("kubernetes" if ENV_JOB_INDEX in environ and
                                        ENV_PROCESS_ID not in environ else "environment")
        return _explicit(mode, source, coordinator, count, index, environ)
    cluster = _cluster(environ)
    if cluster is not None:
        return cluster
    return Launch("jax") if mode == "true" else None


def _explicit(mode: str, source: str, coordinator: str, count: int | None, index: int | None,
              environ: Mapping[str, str]) -> Launch | None:
    """Addresses and counts named by flags or MESHLM_* variables; a scheduler's environment may
    supply what they leave out (jax reads it), otherwise all three are needed."""
    if coordinator and not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", coordinator):
        raise UserError(f"coordinator address {coordinator!r} must be host:port, e.g. "
                        f"node001:1234 (from --coordinator_address or {ENV_COORDINATOR})")
    if count is not None and count < 1:
        raise UserError(f"--num_processes must be at least 1, got {count}")
    if index is not None and (index < 0 or (count is not None and index >= count)):
        raise UserError(f"--process_id={index} must be in [0, {count or 'num_processes'})")
    missing = [name for name, value in (("--coordinator_address", coordinator),
                                        ("--num_processes", count), ("--process_id", index))
               if value in ("", None)]
    cluster = _cluster(environ, force=True)
    if missing and cluster is None:
        raise UserError(f"a multi-host run ({source}) also needs {' and '.join(missing)} (or "
                        f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID} in the "
                        f"environment); set them on every process, or --distributed=false")
    if count == 1 and mode == "auto":
        return None
    return Launch(cluster.source if missing else source, coordinator or None, count, index,
                  cluster.local_device_ids if cluster else None)


def _cluster(environ: Mapping[str, str], force: bool = False) -> Launch | None:
    """A scheduler's multi-process job that jax's own detection handles (`force`: even with a
    single process, because flags already asked for a distributed run)."""
    slurm = all(name in environ for name in _SLURM)
    if slurm and (force or (_env_int(environ, "SLURM_NTASKS") or 1) > 1):
        # e.g. "1(x4)" (4 nodes, 1 task each) or "8,4": tasks on each node of this step.
        per_node = environ.get("SLURM_STEP_TASKS_PER_NODE",
                               environ.get("SLURM_TASKS_PER_NODE", ""))
        one_per_node = bool(per_node) and all(
            part.split("(")[0] == "1" for part in per_node.split(","))
        return Launch("slurm", local_device_ids=[] if one_per_node else None)
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or environ.get("MEGASCALE_COORDINATOR_ADDRESS") or (force and hosts):
        return Launch("tpu")
    return None


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    if name not in environ:
        return None
    try:
        return int(environ[name])
    except ValueError:
        raise UserError(f"environment variable {name}={environ[name]!r} must be an integer; "
                        f"fix the job's environment") from None


def start(mode: str, coordinator_address: str = "", num_processes: int | None = None,
          process_id: int | None = None, timeout_s: int = 300) -> Launch | None:
    """Detects the launch and joins it; call before anything touches a device."""
    launch = detect(mode, coordinator_address, num_processes, process_id)
    if launch is None:
        return None
    if launch.coordinator_address and launch.process_id:
        # jax aborts the whole process (no exception) when the coordinator never answers.
        _wait_for(launch.coordinator_address, timeout_s)
    try:
        jax.distributed.initialize(**launch.kwargs(), initialization_timeout=timeout_s)
    except (ValueError, RuntimeError, jax.errors.JaxRuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        hint = ("pass --coordinator_address, --num_processes and --process_id, or run under "
                "SLURM, Kubernetes or a TPU pod" if launch.source == "jax" else
                "check that every process got the same coordinator and process count and that "
                "process 0 is reachable")
        raise UserError(f"could not join the multi-host run ({launch.describe()}): {reason}; "
                        f"{hint}") from None
    return launch


def _wait_for(address: str, timeout_s: float) -> None:
    """Returns once something listens at `address` (process 0's coordinator service)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise UserError(f"could not reach the coordinator {address} (process 0) in "
                                f"{timeout_s:.0f} s ({e.strerror or e}); check that process 0 "
                                f"runs and that this host can reach that address") from None
            time.sleep(1.0)


def is_primary() -> bool:
    """Process 0 writes what exists once: logs, metrics, config files."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's `data` on every process (the others pass None)."""
    if jax.process_count() == 1:
        return data or b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data) if is_primary() else 0)))
    buffer = np.zeros(size, np.uint8)
    if is_primary():
        buffer[:] = np.frombuffer(data, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8).tobytes()


def _allgather_bytes(data: bytes) -> list[bytes]:
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    buffer = np.zeros(int(sizes.max()), np.uint8)
    buffer[:len(data)] = np.frombuffer(data, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(buffer), np.uint8)
    return [gathered[i, :sizes[i]].tobytes() for i in range(len(sizes))]


def gather_data_state(state: dict) -> dict:
    """The state of every data shard, for a checkpoint's one JSON `data` item (which orbax writes
    from process 0 alone): {"data_shards": S, "shards": [state of shard 0, ...]}. `state` is this
    process's iterator state; processes read consecutive shards in process order."""
    if jax.process_count() == 1:
        states = [state]
    else:
        states = [json.loads(b) for b in _allgather_bytes(json.dumps(state).encode())]
    shards = [s for host in states for s in shard_states(host)]
    return {"data_shards": len(shards), "shards": shards}


def saved_shards(saved: dict) -> list[dict]:
    """The per-shard states in a checkpoint's `data` item, in any format this code ever wrote:
    one process's state (before multi-host runs), one state per process (before --data_shards;
    each process then read one shard), or one per shard."""
    if "shards" in saved and "data_shards" in saved:
        return saved["shards"]
    if "processes" in saved:
        return [s for host in saved["processes"] for s in shard_states(host)]
    return shard_states(saved)


def local_data_state(saved: dict, shard_count: int) -> dict | None:
    """This process's iterator state from a checkpoint's `data` item, or None if it was written
    with another number of data shards: a place in one split of the data means nothing in
    another."""
    shards = saved_shards(saved)
    if len(shards) != shard_count:
        return None
    mine = host_shards(shard_count, jax.process_index(), jax.process_count())
    return host_state([shards[i] for i in mine])


def check_batch_split(mesh: Mesh, batch_size: int) -> None:
    """Each host reads its own shard of the data and feeds its own rows of the global batch, so
    the mesh must give every host a distinct, equal share of the batch rows (not, e.g., the same
    rows on two hosts because --dcn_mesh put `tensor` across them)."""
    if jax.process_count() == 1:
        return
    layout = sharding.named(mesh, "batch").devices_indices_map((batch_size,))
    rows: dict[int, set[int]] = {}
    for device, (index,) in layout.items():
        rows.setdefault(device.process_index, set()).update(range(*index.indices(batch_size)))
    share = batch_size // jax.process_count()
    # Host p reads the data shards of rows [p * share, (p + 1) * share) (data/shards.py).
    in_order = all(rows.get(p) == set(range(p * share, (p + 1) * share))
                   for p in range(jax.process_count()))
    if not in_order:
        raise UserError(f"mesh {dict(mesh.shape)} does not split the batch across hosts (host "
                        f"p must hold rows [p * {share}, (p + 1) * {share}) of the {batch_size}, "
                        f"since it reads its own data shards); put the axes that cross hosts "
                        f"(--dcn_mesh) on data or fsdp")
