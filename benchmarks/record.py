"""Benchmark results files: benchmarks/results/<date>-<device>.json, one a day and device, each run
appended with the command that made it, the device it ran on and the package versions, so a number
can be traced and rerun. The device and versions come from runtime/provenance.py."""

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import sys

from runtime.errors import UserError
from runtime.files import write_json
from runtime.provenance import device_info, device_slug, git_revision, versions

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def read_results(path: str) -> dict:
    """The results file at `path` ({"runs": []} if there is none yet)."""
    if not os.path.exists(path):
        return {"runs": []}
    refused = UserError(f"--out={path} exists but is not a results file with a 'runs' list; "
                        "move it or choose another --out")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError):
        raise refused from None
    if not (isinstance(results, dict) and isinstance(results.get("runs"), list)):
        raise refused
    return results


@contextlib.contextmanager
def _locked(path: str):
    """Holds an exclusive lock on `path`.lock: two benchmarks finishing at once would otherwise
    both read the file, each add its run and rename over the other's, losing one run. The lock
    file stays (removing it would race a waiter that already opened it)."""
    with open(f"{path}.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge_into(path: str, run: dict, header: dict) -> None:
    """Appends `run` to the file's "runs" (earlier runs kept, concurrent writers serialised);
    the header fields are refreshed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _locked(path):
        results = read_results(path)
        write_json(path, {**results, **header, "runs": [*results["runs"], run]})


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
           "git_revision": git_revision(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), **body}
    merge_into(out, run, {"device": device_info(), "versions": versions(),
                          "date": str(datetime.date.today())})
