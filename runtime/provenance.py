"""Where a number came from: the device it ran on, the package versions and the git revision of
the checkout, recorded beside every benchmark and report so a figure can be traced and rerun."""

import importlib.metadata
import os
import platform
import subprocess

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers")


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


def git_revision() -> str | None:
    """The checkout's commit (with "-dirty" when it has uncommitted changes); None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               check=False,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")
