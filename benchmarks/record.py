"""Benchmark results files: benchmarks/results/<date>-<device>.json, one a day and device, each run
appended with the command that made it, the device it ran on and the package versions, so a number
can be traced and rerun. Shared by the benchmarks and infer.bench / infer.report / infer.compare."""

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import sys

import jax

from model.errors import UserError

PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers")
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def device_info() -> dict:
    dev = jax.devices()[0]
    info = {"platform": dev.platform, "device_kind": dev.device_kind, "count": jax.device_count(),
            "cpu_count": os.cpu_count()}
    if dev.platform == "cpu":
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else platform.processor()
    return info


def device_slug(info: dict) -> str:
    """'cpu-2core', 'nvidia-h100', 'nvidia-h100x8': the results file name's device part."""
    if info["platform"] == "cpu":
        return f"cpu-{info['cpu_count']}core"
    slug = "-".join(info["device_kind"].lower().split()[:2])
    return slug + (f"x{info['count']}" if info["count"] > 1 else "")


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def read_results(path: str) -> dict:
    """The results file at `path` ({"runs": []} if there is none yet)."""
    if not os.path.exists(path):
        return {"runs": []}
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        assert isinstance(results, dict) and isinstance(results.get("runs"), list)
    except (OSError, ValueError, AssertionError):
        raise UserError(f"--out={path} exists but is not a results file with a 'runs' list; "
                        "move it or choose another --out") from None
    return results


def merge_into(path: str, run: dict, header: dict) -> None:
    """Appends `run` to the file's "runs" (earlier runs kept); the header fields are refreshed."""
    results = read_results(path)
    results = {**results, **header, "runs": [*results["runs"], run]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def results_path(out: str) -> str:
    """--out, or else today's results file for this device; checked when a benchmark starts, so
    a bad file is refused before minutes of timing, not after."""
    path = out
    if not path:
        path = os.path.join(RESULTS, f"{datetime.date.today()}-{device_slug(device_info())}.json")
    read_results(path)
    return path


def save_run(benchmark: str, body: dict, out: str) -> None:
    """Appends one run of `python -m benchmarks.<benchmark>` (its config and numbers in `body`) to
    the results file `out` (from results_path)."""
    run = {"benchmark": benchmark,
           "command": shlex.join(["python", "-m", f"benchmarks.{benchmark}", *sys.argv[1:]]),
           "time": datetime.datetime.now().isoformat(timespec="seconds"),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), **body}
    merge_into(out, run, {"device": device_info(), "versions": versions(),
                          "date": str(datetime.date.today())})
