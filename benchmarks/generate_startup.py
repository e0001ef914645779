"""Cold and warm time to first token of `python -m infer.generate`, as a user meets it: the
command is a child process, timed from its start to the first generated text on its stdout
(imports, loading, compilation or a compilation-cache read, prefill and one token), and to its
exit. "Cold" runs with an empty --compilation_cache directory (a new machine, or a new model
shape), "warm" with one an earlier run filled. Each round runs both, in alternating order; the
generated text must be the same for both before any ratio is reported. Merged into
benchmarks/results/<date>-<device>.json.

  python -m benchmarks.generate_startup --checkpoint=runs/quickstart
"""

import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from benchmarks.record import results_path, save_run
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "Training workdir or converted model to generate "
                                            "from (e.g. runs/quickstart).")
    flags.DEFINE_string("prompt", "def ", "Prompt (streamed: one prompt).")
    flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate per run.")
    flags.DEFINE_integer("rounds", 5, "Rounds; each runs the command cold and warm.")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def timed_run(args: list[str], prompt: str) -> dict:
    """Runs `python -m infer.generate ARGS`: seconds to the first byte after the echoed prompt,
    seconds to exit, and its stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "infer.generate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    echoed, out, first = len(prompt.encode()), b"", None
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], 600)
        if not ready:
            proc.kill()
            raise UserError("python -m infer.generate produced no output for 600 s")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        out += chunk
        if first is None and len(out) > echoed:
            first = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise UserError(f"python -m infer.generate exited with {proc.returncode}: "
                        f"{err.strip().splitlines()[-1] if err.strip() else ''}")
    return {"ttft_s": first, "total_s": time.perf_counter() - start,
            "stdout": out.decode(errors="replace")}


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS.checkpoint:
        raise UserError("--checkpoint is required (e.g. runs/quickstart, after the quickstart)")
    if not os.path.isfile(os.path.join(FLAGS.checkpoint, "config.json")):
        raise UserError(f"--checkpoint={FLAGS.checkpoint} has no config.json")
    for name in ("rounds", "max_new_tokens"):
        if FLAGS[name].value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {FLAGS[name].value}")
    out = results_path(FLAGS.out)
    base = [f"--checkpoint={FLAGS.checkpoint}", f"--prompt={FLAGS.prompt}",
            f"--max_new_tokens={FLAGS.max_new_tokens}"]
    scratch = tempfile.mkdtemp(prefix="meshlm-startup-")
    try:
        warm_dir = os.path.join(scratch, "warm")
        filled = timed_run([*base, f"--compilation_cache={warm_dir}"], FLAGS.prompt)
        runs = {"cold": [], "warm": []}
        for r in range(FLAGS.rounds):
            for kind in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
                cache = warm_dir if kind == "warm" else os.path.join(scratch, f"cold{r}")
                runs[kind].append(timed_run([*base, f"--compilation_cache={cache}"],
                                            FLAGS.prompt))
                print(f"round {r + 1}/{FLAGS.rounds} {kind}: time to first token "
                      f"{runs[kind][-1]['ttft_s']:.2f} s, exit {runs[kind][-1]['total_s']:.2f} s",
                      flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    outputs = {run["stdout"] for kind in runs for run in runs[kind]} | {filled["stdout"]}
    if len(outputs) != 1:
        raise UserError("cold and warm runs printed different text; no timing is reported")
    body = {"config": {"checkpoint": FLAGS.checkpoint, "prompt": FLAGS.prompt,
                       "max_new_tokens": FLAGS.max_new_tokens, "rounds": FLAGS.rounds},
            "output": outputs.pop()}
    for kind, timed in runs.items():
        body[kind] = {m: _spread([run[m] for run in timed]) for m in ("ttft_s", "total_s")}
    cold, warm = body["cold"]["ttft_s"]["median"], body["warm"]["ttft_s"]["median"]
    body["ttft_cold_over_warm"] = cold / warm
    save_run("generate_startup", body, out)
    print(f"time to first token: cold {body['cold']['ttft_s']['median']:.2f} s "
          f"({body['cold']['ttft_s']['min']:.2f}-{body['cold']['ttft_s']['max']:.2f}), warm "
          f"{body['warm']['ttft_s']['median']:.2f} s ({body['warm']['ttft_s']['min']:.2f}-"
          f"{body['warm']['ttft_s']['max']:.2f}); recorded in {out}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.generate_startup")
