"""The numbers of `python -m train.plan`: the target topology (peaks and memory per device), the
FLOPs of the traced step, the per-device memory of the compiled one, its roofline, and the table,
hint and JSON they are printed as."""

import dataclasses
import json
import math
import re

from runtime.errors import UserError
from runtime.files import atomic_write
from runtime.hardware import (
    CHIPS,
    CPU_FLOPS_SOURCE,
    GIB,
    chip_of,
    host_memory_bytes,
    measured_cpu_bandwidth,
    peak_flops,
)

# JAX preallocates this fraction of a GPU's memory for its allocator unless
# XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise: a step needing more reaches the limit sooner.
JAX_GPU_MEM_FRACTION = 0.75
_TOPOLOGY = re.compile(r"(?P<chip>[a-z0-9]+?)(?:[x-](?P<count>\d+))?")


@dataclasses.dataclass(frozen=True)
class Target:
    """The devices a plan is for; None where unknown (no roofline / no memory limit then)."""

    name: str
    platform: str | None  # None: whatever this machine has
    count: int | None = None
    peak_flops: float | None = None  # per device
    bandwidth: float | None = None  # bytes/s per device
    memory_bytes: float | None = None  # per device
    source: str = ""


def parse_topology(name: str) -> Target:
    """`h100x8`, `h100x64`, `a100x8`, `v5p-64` (32 chips), `v5e-16`, `cpu`, `cpux8`, or a bare
    chip (`h100`, its count taken from --num_devices or --mesh); "" is this machine."""
    name = name.strip().lower()
    if not name:
        return Target("", None)
    match = _TOPOLOGY.fullmatch(name)
    chip_name = match and match["chip"]
    if chip_name != "cpu" and chip_name not in CHIPS:
        raise UserError(f"unknown --topology={name!r}; write CHIP, CHIPxN or CHIP-N with CHIP one "
                        f"of {', '.join([*CHIPS, 'cpu'])} (e.g. h100x8, v5p-64)")
    count = int(match["count"]) if match["count"] else None
    if count == 0:
        raise UserError(f"--topology={name} has no devices; give a positive count, e.g. "
                        f"{chip_name}x8")
    if chip_name == "cpu":
        return Target(name, "cpu", count)
    chip = CHIPS[chip_name]
    if count is not None and count % chip.cores_per_device:
        raise UserError(f"--topology={name}: {chip_name} slices count TensorCores, "
                        f"{chip.cores_per_device} a chip; use a multiple of "
                        f"{chip.cores_per_device}")
    return Target(name, chip.platform, count and count // chip.cores_per_device,
                  chip.peak_flops("bfloat16"), chip.bandwidth, chip.memory_gib * GIB,
                  f"{chip_name} datasheet: dense bf16 peak, HBM bandwidth and capacity")


def cpu_target(name: str, count: int) -> Target:
    """This host split into `count` devices: its peaks (runtime/hardware.py) and its RAM, shared
    evenly."""
    import jax

    flops = peak_flops(jax.devices("cpu")[:1])
    return Target(name, "cpu", count, flops / count, measured_cpu_bandwidth() / count,
                  host_memory_bytes() / count,
                  f"this host ({CPU_FLOPS_SOURCE}, measured bandwidth) and its RAM, split over "
                  "the devices")


def local_target(devices: list) -> Target:
    """The accelerators this process compiled on: datasheet peaks, and the memory their
    allocator may use as JAX reports it."""
    chip = chip_of(devices[0])
    stats = devices[0].memory_stats() or {}
    memory = stats.get("bytes_limit")
    return Target(devices[0].device_kind, devices[0].platform, len(devices),
                  chip.peak_flops() if chip else float("nan"), chip.bandwidth if chip else None,
                  memory, f"{chip.name if chip else 'unknown chip'} datasheet: dense bf16 peak "
                  "and bandwidth; memory: the allocator's limit")


def matmul_flops(jaxpr) -> float:
    """FLOPs of every dot_general in a jaxpr (global shapes), a scan's body counted `length`
    times (XLA's cost analysis counts a loop body once; a while loop's is counted once here too)
    and a cond by its costliest branch; recomputation under remat is in the program, so counted."""
    from jax.extend.core import jaxprs_in_params

    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                lhs[d] for d in contracting)
            continue
        counts = [matmul_flops(inner) for inner in jaxprs_in_params(eqn.params)]
        if eqn.primitive.name == "cond":
            total += max(counts, default=0.0)
        elif eqn.primitive.name == "scan":
            total += sum(counts) * eqn.params["length"]
        else:
            total += sum(counts)
    return total


@dataclasses.dataclass
class Plan:
    """Everything the plan reports; bytes are per device, FLOPs per step over all devices."""

    model: str
    objective: str
    num_params: int
    devices: int
    mesh: dict
    dcn_mesh: str  # the part of the mesh that crosses hosts ("": none said)
    compiled_on: str
    compile_s: float
    tokens_per_step: int
    params_bytes: float
    optimizer_bytes: float
    other_state_bytes: float  # step counter and RNG key
    argument_bytes: float
    output_bytes: float
    alias_bytes: float
    temp_bytes: float
    code_bytes: float
    model_flops: float  # the family's train_flops_per_token x tokens (6N + attention), what MFU counts
    program_flops: float  # the traced step's matmuls, remat recomputation included
    xla_flops: float | None  # compiled.cost_analysis() x devices (a scanned body counted once)
    xla_bytes_accessed: float | None  # per device, same caveat
    target: Target
    limit_bytes: float | None
    limit_source: str

    @property
    def batch_bytes(self) -> float:
        return max(self.argument_bytes - self.params_bytes - self.optimizer_bytes
                   - self.other_state_bytes, 0.0)

    @property
    def total_bytes(self) -> float:
        """Live at the peak: inputs, outputs not written over donated inputs, temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes \
            + self.code_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.limit_bytes is None else self.total_bytes <= self.limit_bytes

    def roofline(self) -> dict | None:
        """Lower bound on the step time at the target's peaks: the program's FLOPs at peak, or
        reading every input and writing every output once at full bandwidth; communication
        between devices is not modelled."""
        t = self.target
        if not (t.peak_flops and t.bandwidth):
            return None
        compute = self.program_flops / self.devices / t.peak_flops
        memory = (self.argument_bytes + self.output_bytes) / t.bandwidth
        step = max(compute, memory)
        return {"compute_s": compute, "memory_s": memory, "step_s": step,
                "bound": "compute" if compute >= memory else "memory",
                "tokens_per_s": self.tokens_per_step / step,
                "mfu": self.model_flops / (step * self.devices * t.peak_flops)}

    def to_json(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "target"}
        out["target"] = dataclasses.asdict(self.target)
        out.update(batch_bytes=self.batch_bytes, total_bytes=self.total_bytes, fits=self.fits,
                   roofline=self.roofline())
        return out


def write_json(plan: Plan, path: str, remat: Plan | None = None) -> None:
    """The plan's numbers, and those of the --remat=full plan made for a step that did not fit."""
    record = plan.to_json()
    if remat is not None:
        record["with_remat_full"] = {"total_bytes": remat.total_bytes, "fits": remat.fits,
                                     "temp_bytes": remat.temp_bytes,
                                     "program_flops": remat.program_flops}
    try:
        with atomic_write(path) as f:
            json.dump(record, f, indent=2)
    except OSError as e:
        raise UserError(f"cannot write --json={path} ({e.strerror}); choose another path") \
            from None


def _gib(n: float) -> str:
    return f"{n / GIB:9.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:9.2f} MiB"


def _si(x: float) -> str:
    """989e12 -> '989 T', 3.35e12 -> '3.35 T', 7e9 -> '7 G'."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}"
    return f"{x:.3g} "


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def _flops(n: float | None) -> str:
    return "n/a" if n is None else f"{n:10.3e}"


def format_table(plan: Plan) -> str:
    t = plan.target
    across = f" (--dcn_mesh={plan.dcn_mesh} across hosts)" if plan.dcn_mesh else ""
    rows = [
        (f"plan: {plan.model} (--objective={plan.objective}), {_count(plan.num_params)} "
         f"params, {plan.tokens_per_step:,} tokens a step"),
        (f"  {plan.devices} devices, mesh {plan.mesh}{across}; compiled on {plan.compiled_on} "
         f"in {plan.compile_s:.1f} s"),
        "",
        "memory per device",
        f"  params                        {_gib(plan.params_bytes)}",
        f"  optimizer state               {_gib(plan.optimizer_bytes)}",
        f"  step and RNG                  {_gib(plan.other_state_bytes)}",
        f"  batch                         {_gib(plan.batch_bytes)}",
        f"  activations and temporaries   {_gib(plan.temp_bytes)}",
        f"  outputs not donated           {_gib(plan.output_bytes - plan.alias_bytes)}",
        f"  code                          {_gib(plan.code_bytes)}",
        f"  total                         {_gib(plan.total_bytes)}   {fit_text(plan)}",
        "",
        "FLOPs per step (all devices)",
        f"  model, 6N + attention         {_flops(plan.model_flops)}   (what MFU counts)",
        f"  traced program, matmuls       {_flops(plan.program_flops)}   (with remat's recompute)",
        f"  XLA cost analysis             {_flops(plan.xla_flops)}   (scanned layers counted once)",
        "",
    ]
    roof = plan.roofline()
    if roof is None:
        rows.append("step time: not predicted (no peak FLOP/s or bandwidth known for the target; "
                    "pass --topology, e.g. h100x8)")
        return "\n".join(rows)
    rows.append(f"roofline on {t.name} ({_si(t.peak_flops)}FLOP/s, {_si(t.bandwidth)}B/s per "
                f"device; {t.source})")
    rows.append(f"  compute {_seconds(roof['compute_s'])}, memory {_seconds(roof['memory_s'])}: "
                f"step >= {_seconds(roof['step_s'])} ({roof['bound']}-bound), <= "
                f"{roof['tokens_per_s']:,.0f} tokens/s, MFU <= {100 * roof['mfu']:.0f}%")
    rows.append("  (a lower bound: communication between devices is not modelled)")
    return "\n".join(rows)


def fit_text(plan: Plan) -> str:
    if plan.limit_bytes is None:
        return "(no memory limit known: pass --topology or --memory_per_device)"
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    text = f"of {plan.limit_bytes / GIB:.2f} GiB ({plan.limit_source}): {verdict}"
    datasheet = plan.limit_source == f"--topology={plan.target.name}"
    if plan.fits and datasheet and plan.target.platform == "gpu" \
            and plan.total_bytes > JAX_GPU_MEM_FRACTION * plan.limit_bytes:
        text += (f"; above JAX's default {JAX_GPU_MEM_FRACTION:.0%} of GPU memory: set "
                 f"XLA_PYTHON_CLIENT_MEM_FRACTION")
    return text


def hint(plan: Plan, cfg, mesh: dict[str, int], remat: Plan | None = None) -> str:
    """What to change when the step does not fit, from where its memory goes; `remat` is the
    same step compiled with --remat=full, when that was worth a compile."""
    state = plan.params_bytes + plan.optimizer_bytes
    if state > plan.limit_bytes:
        ways = mesh["fsdp"] * mesh["tensor"]
        split = f"split {ways} ways by fsdp x tensor" if ways > 1 else "whole on every device"
        return (f"hint: params and optimizer state alone take {state / GIB:.2f} GiB a device "
                f"({split}): use more devices on fsdp (e.g. --mesh=fsdp=-1), or "
                f"--optimizer=adafactor")
    lines = []
    if remat is not None:
        verdict = "fits" if remat.fits else "still does not fit"
        lines.append(f"hint: with --remat=full the step needs {remat.total_bytes / GIB:.2f} GiB a "
                     f"device ({verdict}) for {remat.program_flops / plan.program_flops:.2f}x "
                     f"the matmul FLOPs")
    rows = cfg.batch_size // (cfg.grad_accum * mesh["data"] * mesh["fsdp"])
    ways = [] if cfg.remat == "full" or remat else ["--remat=full or --remat=dots"]
    if rows > 1:
        ways.append(f"a larger --grad_accum (now {rows} rows a device per micro-batch)")
    ways.append("a shorter --seq_len or a tensor axis in --mesh (attention and MLP activations "
                "split by heads)")
    lines.append(f"hint: activations and temporaries take {plan.temp_bytes / GIB:.2f} GiB a "
                 f"device; they shrink with {', or '.join(ways)}")
    return "\n".join(lines)
