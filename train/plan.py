"""`python -m train.plan --flagfile=F [--mesh=... --num_devices=N --topology=NAME
--memory_per_device=GiB --json=PATH]`: compiles a run's train step ahead of time for a target
device count, without running it or allocating its state, and prints what each device needs
(params, optimizer state, activations), the step's FLOPs and a roofline step time; it exits 2
if the step would not fit in the devices' memory.

Every `python -m train` flag is accepted, so a training run's flag file plans as it is. Where
the target devices are not on this machine, the step compiles for N fake CPU devices (XLA:CPU):
the command then starts itself again with XLA_FLAGS set, since JAX fixes the device count when
its backend starts.
"""

import math
import os
import re
import sys
import time

import numpy as np
from absl import flags

from runtime.command import run_command
from runtime.errors import UserError
from train import plan_report
from train.flags import MODEL_OVERRIDES, TrainConfig, config_from_flags
from train.flags import define_flags as define_train_flags

FLAGS = flags.FLAGS
# Set in the command started again on fake devices: how many it was started with.
CHILD_ENV = "MESHLM_PLAN_DEVICES"
_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")


def define_flags() -> None:
    define_train_flags()
    flags.DEFINE_integer("num_devices", 0, "Devices to plan for. 0: the count in --topology, "
                                           "else the product of --mesh's sizes when none is -1, "
                                           "else this machine's devices.")
    flags.DEFINE_string("topology", "", "Target devices, for the roofline and the memory limit: "
                                        "CHIPxN or CHIP-N, e.g. h100x8, h100x64, h200x8, a100x8, "
                                        "v5p-64 (TPU v4/v5p slice names count TensorCores, two a "
                                        "chip: 32 devices), v5e-16, v6e-8; or cpu (this host "
                                        "split into the devices). Chips: "
                                        f"{', '.join(plan_report.CHIPS)}. Empty: this machine's "
                                        "accelerators when they are the target, else no roofline "
                                        "and no memory limit.")
    flags.DEFINE_float("memory_per_device", None, "Exit 2 if the step needs more than this many "
                                                  "GiB on a device. Default: the --topology's "
                                                  "device memory (no limit without one).")
    flags.DEFINE_string("json", "", "Also write every number of the plan to this JSON file.")


class ByteTokenizer:
    """Stands in for the run's tokenizer: a batch's shapes depend on the flags, not on the ids,
    so bytes (plus the task's special pieces) make the same batches without training one."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3
    path = "<plan: bytes>"

    def __init__(self, symbols: tuple[str, ...]):
        self._symbols = {s: 4 + i for i, s in enumerate(symbols)}
        self._offset = 4 + len(symbols)
        self.vocab_size = self._offset + 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode(), np.uint8).astype(np.int32) + self._offset

    def piece_id(self, piece: str) -> int | None:
        return self._symbols.get(piece)


def synthetic_data(task, cfg: TrainConfig):
    """Stand-in data of the task's kind, every document long enough for a whole row (and for a
    next-sentence pair) at any --seq_len."""
    from data.classify import ClassificationTask, Example
    from data.corpus import Corpus
    from data.pipeline import CHARS_PER_TOKEN
    from data.seq2seq import Pair, Seq2SeqTask
    from train.tasks import DEFAULT_NUM_CLASSES, target_len

    line = "def step(state, batch):  # any text: only the shapes of its batches matter\n"
    chars = 4 * CHARS_PER_TOKEN * (cfg.seq_len + target_len(task, cfg))
    docs = [line * (chars // len(line) + 2) for _ in range(4)]
    fingerprint = {"source": "plan", "sha256": ""}
    if task.kind == "pairs":
        pairs = [Pair(doc, doc) for doc in docs]
        return Seq2SeqTask(pairs, pairs, fingerprint)
    if task.kind == "labels":
        classes = cfg.num_classes or DEFAULT_NUM_CLASSES
        examples = [Example(doc, i % classes) for i, doc in enumerate(docs * classes)]
        return ClassificationTask(examples, examples, [f"label_{i}" for i in range(classes)],
                                  fingerprint)
    return Corpus(docs, docs, fingerprint)


def _fixed_mesh_size(spec: str) -> int | None:
    """The device count --mesh names when every size is given (None with a -1 or none)."""
    try:
        sizes = [int(part.partition("=")[2]) for part in spec.split(",")] if spec.strip() else []
    except ValueError:
        return None  # parse_mesh says what is wrong with it
    return math.prod(sizes) if sizes and all(s > 0 for s in sizes) else None


def _requested_count(target: plan_report.Target, cfg: TrainConfig) -> tuple[int | None, str]:
    """(device count the flags ask for, which flag says so)."""
    n = FLAGS.num_devices
    if n < 0:
        raise UserError(f"--num_devices must be positive (or 0: from --topology or --mesh), "
                        f"got {n}")
    if n and target.count and n != target.count:
        raise UserError(f"--num_devices={n} but --topology={target.name} has {target.count} "
                        f"devices; drop one of them")
    if n:
        return n, f"--num_devices={n}"
    if target.count:
        return target.count, f"--topology={target.name}"
    per_host = _fixed_mesh_size(cfg.mesh)
    hosts = _fixed_mesh_size(cfg.dcn_mesh) if cfg.dcn_mesh.strip() else 1
    if per_host is None or hosts is None:
        return None, ""
    why = f"--mesh={cfg.mesh}" if not cfg.dcn_mesh.strip() else \
        f"--mesh={cfg.mesh} --dcn_mesh={cfg.dcn_mesh}"
    return per_host * hosts, why


def mesh_sizes(cfg: TrainConfig, count: int) -> dict[str, int]:
    """Axis sizes of --mesh over `count` devices, or with --dcn_mesh of --mesh over each host's
    devices times --dcn_mesh over the hosts, as model/sharding.py lays out a multi-host run (the
    plan compiles the same program; which devices share a host only changes communication)."""
    from model.sharding import MESH_AXES, parse_mesh

    if not cfg.dcn_mesh.strip():
        return parse_mesh(cfg.mesh, count)
    hosts = _fixed_mesh_size(cfg.dcn_mesh)
    if hosts is None:
        raise UserError(f"--dcn_mesh={cfg.dcn_mesh!r}: write it as axis=size pairs with every "
                        f"size given (e.g. data=4), since a plan has no hosts to count for a -1")
    if count % hosts:
        raise UserError(f"--dcn_mesh={cfg.dcn_mesh!r} makes {hosts} hosts, which cannot share "
                        f"{count} devices evenly")
    outer = parse_mesh(cfg.dcn_mesh, hosts, "--dcn_mesh", "hosts")
    if outer["tensor"] > 1:  # what train/distributed.py check_batch_split refuses in a run
        raise UserError(f"--dcn_mesh={cfg.dcn_mesh!r} puts tensor across hosts, so hosts would "
                        f"share batch rows although each reads its own data; put the axes that "
                        f"cross hosts on data or fsdp")
    inner = parse_mesh(cfg.mesh, count // hosts, "--mesh", "devices per host")
    return {axis: inner[axis] * outer[axis] for axis in MESH_AXES}


def _check_mesh(cfg: TrainConfig, count: int, why: str) -> None:
    try:
        mesh_sizes(cfg, count)
    except UserError as e:
        raise UserError(f"{e} (this plan is for {count} devices: {why})") from None


def _restart_on_fake_devices(count: int) -> None:
    """Runs this command again, in this process, on `count` fake CPU devices."""
    env = dict(os.environ)
    xla = _COUNT_FLAG.sub("", env.get("XLA_FLAGS", ""))
    # The fake devices never run the program: skipping LLVM's optimisations halves the compile
    # and leaves the buffers and FLOPs the plan reads the same.
    fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env.update(XLA_FLAGS=f"{xla} {fast} --xla_force_host_platform_device_count={count}".strip(),
               JAX_PLATFORMS="cpu", **{CHILD_ENV: str(count)})
    env.pop("JAX_NUM_CPU_DEVICES", None)  # it would override XLA_FLAGS' count
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "train.plan", *sys.argv[1:]], env)


def _choose_devices(target: plan_report.Target, cfg: TrainConfig):
    """(devices to compile on, words for them, the target with what only they can tell);
    restarts the command on fake CPU devices when the target's are not here."""
    count, why = _requested_count(target, cfg)
    if count is not None:
        _check_mesh(cfg, count, why)
    # The plan allocates next to nothing: don't take 75% of a GPU that a job may be using.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    devices = jax.devices()
    here = devices[0].platform
    if os.environ.get(CHILD_ENV):
        if len(devices) != int(os.environ[CHILD_ENV]):
            raise RuntimeError(f"started with {os.environ[CHILD_ENV]} fake devices, got "
                               f"{len(devices)}")
        stand_in = f" standing in for {target.name}" if target.name else ""
        words = f"{len(devices)} fake CPU devices (XLA:CPU{stand_in})"
        return devices, words, target
    if count is None:
        if target.platform not in (None, here):
            raise UserError(f"--topology={target.name} names no device count and this machine "
                            f"has no {target.platform}; write it like {target.name}x8, or pass "
                            f"--num_devices")
        count, why = len(devices), f"this machine's {here} devices"
        _check_mesh(cfg, count, why)
    # A CPU compiles the same either way, and faster as the fake devices' command.
    if here == "cpu" or target.platform not in (None, here) or count != len(devices):
        _restart_on_fake_devices(count)
    words = f"{count} {devices[0].device_kind} device(s)"
    if target.platform is None:
        target = plan_report.local_target(devices)
    return devices, words, target


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
    cfg = config_from_flags()
    target = plan_report.parse_topology(FLAGS.topology)
    limit = FLAGS.memory_per_device
    if limit is not None and not (limit > 0 and math.isfinite(limit)):
        raise UserError(f"--memory_per_device must be a positive number of GiB, got {limit}")
    devices, words, target = _choose_devices(target, cfg)
    if target.platform == "cpu":
        target = plan_report.cpu_target(target.name, len(devices))
    if limit is not None:
        limit_bytes, limit_source = limit * plan_report.GIB, "--memory_per_device"
    elif target.memory_bytes:
        limit_bytes = target.memory_bytes
        limit_source = f"--topology={target.name}" if FLAGS.topology else "the allocator's limit"
    else:
        limit_bytes, limit_source = None, ""
    plan, mesh = compile_plan(cfg, words, target, limit_bytes, limit_source)
    print(plan_report.format_table(plan))
    remat = None
    if plan.fits is False and cfg.remat != "full" \
            and plan.params_bytes + plan.optimizer_bytes <= limit_bytes:
        # One more compile (as long as the first) answers the first question a user asks.
        remat = compile_plan(cfg.replace(remat="full"), words, target, limit_bytes,
                             limit_source)[0]
    if FLAGS.json:
        plan_report.write_json(plan, FLAGS.json, remat)
    if plan.fits is False:
        print(plan_report.hint(plan, cfg, dict(mesh.shape), remat))
        raise UserError(f"the step needs {plan.total_bytes / plan_report.GIB:.2f} GiB a device "
                        f"but {limit_source} allows {limit_bytes / plan_report.GIB:.2f} GiB; "
                        f"change the mesh, --remat, --grad_accum or --seq_len as the hint above "
                        f"says")


def _bytes_per_device(tree) -> float:
    import jax

    return float(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                     for x in jax.tree.leaves(tree)))


def compile_plan(cfg: TrainConfig, compiled_on: str, target: plan_report.Target,
                 limit_bytes: float | None, limit_source: str):
    """Builds the model, optimizer, state and batch layout as train/loop.py does (abstract only),
    compiles the step and measures it; returns (the plan, the mesh)."""
    # Imported here, not at the top: a bad flag is refused before JAX and the model load.
    import flax.linen as nn
    import jax
    from jax.sharding import AxisType

    from data.sentencepiece_tokenizer import load_tokenizer
    from model import sharding
    from model.config import get_preset
    from model.family import build_model, family_of
    from train.optimizer import make_optimizer
    from train.prepare import (  # prepare's own checks: a plan refuses what a run would
        check_batch,
        check_numbers,
        read_pretrained,
    )
    from train.state import abstract_state
    from train.step import batch_shardings, jit_train_step, make_train_step
    from train.tasks import get_task, target_len

    check_numbers(cfg)
    if cfg.objective == "distill":  # its step also reads the teacher's logits and params
        raise UserError("train.plan does not plan --objective=distill; plan the student with "
                        "--objective=clm (decoder) or mlm (encoder), then add a float32 "
                        "[batch, seq_len, vocab] array per step and the teacher's params")
    task = get_task(cfg.objective)
    tx, schedule = make_optimizer(cfg)
    pretrained = read_pretrained(cfg, task)
    base = pretrained if pretrained is not None else get_preset(cfg.preset)
    model_cfg = base.replace(**{name: getattr(cfg, name) for name in MODEL_OVERRIDES})
    task.check_family(model_cfg, f"--preset={cfg.preset}")
    if cfg.tokenizer and cfg.vocab_size is None and pretrained is None:  # as prepare sizes it
        model_cfg = model_cfg.replace(vocab_size=load_tokenizer(cfg.tokenizer).vocab_size)
    if cfg.dcn_mesh.strip():  # one process has no hosts to lay out: the same shape, plainly
        sizes = mesh_sizes(cfg, jax.device_count())
        mesh = jax.make_mesh(tuple(sizes[a] for a in sharding.MESH_AXES), sharding.MESH_AXES,
                             axis_types=(AxisType.Auto,) * len(sharding.MESH_AXES))
    else:
        mesh = sharding.make_mesh(cfg.mesh)
    check_batch(cfg, mesh)
    data = synthetic_data(task, cfg)
    model_cfg = task.resolve_model(model_cfg, cfg, data)

    # One row of the task's own pipeline gives every batch array's trailing shape and dtype. It
    # is read from a single data shard: a row has the same shape in every shard, and one row
    # split over --data_shards would leave each shard no rows (check_batch has already checked
    # that --batch_size splits evenly over the shards).
    example = next(iter(task.dataset(cfg.replace(batch_size=1, data_shards=1), data,
                                     ByteTokenizer(task.extra_symbols), "eval")))
    layout = batch_shardings(mesh, example)
    batch = {k: jax.ShapeDtypeStruct((cfg.batch_size, *v.shape[1:]), v.dtype,
                                     sharding=layout[k]) for k, v in example.items()}
    model = build_model(model_cfg)
    state, shardings = abstract_state(model, tx, cfg.seed, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        step = jit_train_step(
            make_train_step(model, task.objective(cfg), tx, schedule, cfg.grad_accum),
            shardings, mesh, layout)
        t0 = time.perf_counter()
        traced = step.trace(state, batch)
        compiled = _compile(traced.lower())
        compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    if memory is None:
        raise UserError(f"the {jax.devices()[0].platform} backend reports no memory analysis; "
                        f"plan with --topology=cpu to compile on fake CPU devices instead")
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    n = mesh.size
    tokens_per_step = cfg.batch_size * task.tokens_per_row(cfg)
    plan = plan_report.Plan(
        model=cfg.preset if pretrained is None else cfg.init_from, objective=cfg.objective,
        num_params=sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"])),
        devices=n, mesh=dict(mesh.shape), dcn_mesh=cfg.dcn_mesh, compiled_on=compiled_on, compile_s=compile_s,
        tokens_per_step=tokens_per_step,
        params_bytes=_bytes_per_device(state["params"]),
        optimizer_bytes=_bytes_per_device(state["opt_state"]),
        other_state_bytes=_bytes_per_device([state["step"], state["rng"]]),
        argument_bytes=float(memory.argument_size_in_bytes),
        output_bytes=float(memory.output_size_in_bytes),
        alias_bytes=float(memory.alias_size_in_bytes),
        temp_bytes=float(memory.temp_size_in_bytes),
        code_bytes=float(memory.generated_code_size_in_bytes),
        model_flops=tokens_per_step * family_of(model_cfg).train_flops_per_token(
            model_cfg, cfg.seq_len, target_len(task, cfg), task.lm_head),
        program_flops=plan_report.matmul_flops(traced.jaxpr.jaxpr),
        xla_flops=cost["flops"] * n if "flops" in cost else None,
        xla_bytes_accessed=cost.get("bytes accessed"),
        target=target, limit_bytes=limit_bytes, limit_source=limit_source)
    return plan, mesh


def _compile(lowered):
    import jax

    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        first = str(e).strip().splitlines()[0]
        raise UserError(f"the compiler found no room for this step on the devices ({first}); "
                        f"use more devices on fsdp, --remat=full or a larger --grad_accum") \
            from None


if __name__ == "__main__":
    run_command(main, define_flags, "train.plan")
