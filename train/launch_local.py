"""`python -m train.launch_local --num_processes=2 --devices_per_process=4 -- --flagfile=F ...`:
a multi-host run on this one machine, for testing the multi-host code paths without a cluster.

It starts N `python -m train` processes, each with its own fake CPU devices, joined through a
coordinator on localhost (gloo CPU collectives), exactly as hosts of a cluster would be. Process
0's output comes here; the others' goes to OUTPUT_DIR/process_<i>.log. If one process fails, the
rest are stopped and its exit code is returned. Everything after `--` goes to `python -m train`.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import flags

from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS
# Set here for every process; given after `--` they would contradict the launcher.
_OWN_FLAGS = ("distributed", "coordinator_address", "num_processes", "process_id")
# After one process fails, the others get this long to fail on their own (most errors hit every
# process at once) before they are killed: a peer that died leaves them waiting in a collective.
GRACE_S = 5.0


def define_flags() -> None:
    flags.DEFINE_integer("num_processes", 2, "Processes to start, each standing for one host.")
    flags.DEFINE_integer("devices_per_process", 4, "Fake CPU devices each process gets "
                                                   "(--xla_force_host_platform_device_count).")
    flags.DEFINE_string("output_dir", "", "Directory for the output of processes 1..N-1 "
                                       "(process_<i>.log); empty: a new temporary directory.")
    flags.DEFINE_integer("port", 0, "Coordinator port on localhost; 0 picks a free one.")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def child_env(devices: int, environ: dict | None = None) -> dict:
    """The environment of one process: CPU only, `devices` fake devices, gloo collectives."""
    env = dict(os.environ if environ is None else environ)
    xla = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{xla.strip()} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    # gloo is jax's default for CPU collectives today; named so that a changed default can't
    # leave the processes unable to reduce across each other.
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    return env


def commands(train_args: list[str], num_processes: int, port: int) -> list[list[str]]:
    """`python -m train` for each process, its place in the run appended to the user's flags."""
    for arg in train_args:
        name = arg.lstrip("-").split("=")[0]
        if arg.startswith("--") and (name in _OWN_FLAGS or name.removeprefix("no") in _OWN_FLAGS):
            raise UserError(f"launch_local sets --{name.removeprefix('no')} itself; drop "
                            f"{arg.split('=')[0]} from the flags after --")
    return [[sys.executable, "-m", "train", *train_args, "--distributed=true",
             f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
             f"--process_id={i}"] for i in range(num_processes)]


def _error_line(log: str) -> str:
    """The last `error: ...` line a process printed (its one-line reason), if any."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.startswith("error: ")]
    except OSError:
        return ""
    return lines[-1].removeprefix("error: ") if lines else ""


def supervise(procs: list[subprocess.Popen], logs: list[str | None]) -> int:
    """Waits for every process; on the first failure stops the rest and returns its code.
    SIGINT/SIGTERM are passed on (each process then checkpoints and exits, as on a cluster)."""
    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                first = failed[0]
                _stop(procs)
                # Process 0's own error line is on the console if it failed too (a bad flag
                # fails every process, in whichever order they get there).
                if first != 0 and not procs[0].returncode > 0:
                    reason = _error_line(logs[first]) or "see its output"
                    print(f"error: process {first} exited with code {codes[first]}: {reason} "
                          f"({logs[first]})", file=sys.stderr)
                return codes[first] if codes[first] > 0 else 1
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    finally:
        _stop(procs, grace_s=0.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(procs: list[subprocess.Popen], grace_s: float = GRACE_S) -> None:
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def main(argv: list[str]) -> None:
    train_args = argv[1:]
    if not train_args:
        raise UserError("pass the training flags after --, e.g. python -m train.launch_local "
                        "--num_processes=2 -- --flagfile=experiments/quickstart.flags")
    if FLAGS.num_processes < 1 or FLAGS.devices_per_process < 1:
        raise UserError(f"--num_processes and --devices_per_process must be at least 1, got "
                        f"{FLAGS.num_processes} and {FLAGS.devices_per_process}")
    cmds = commands(train_args, FLAGS.num_processes, FLAGS.port or free_port())
    log_dir = FLAGS.output_dir or tempfile.mkdtemp(prefix="meshlm-launch-")
    os.makedirs(log_dir, exist_ok=True)
    env = child_env(FLAGS.devices_per_process)
    procs, logs = [], []
    try:
        for i, cmd in enumerate(cmds):
            log = None if i == 0 else os.path.join(log_dir, f"process_{i}.log")
            out = open(log, "w", encoding="utf-8") if log else None  # noqa: SIM115 (child owns it)
            # Own session: a Ctrl-C reaches the processes once, through `supervise`, not also
            # from the terminal (a second SIGINT tells the training loop to stop at once).
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT
                                          if out else None, start_new_session=True))
            logs.append(log)
            if out:
                out.close()
    except BaseException:
        _stop(procs, grace_s=0.0)
        raise
    if len(cmds) > 1:
        print(f"launch_local: {len(cmds)} processes x {FLAGS.devices_per_process} CPU devices; "
              f"the output of processes 1-{len(cmds) - 1} goes to {log_dir}", flush=True)
    sys.exit(supervise(procs, logs))


def run() -> None:
    run_command(main, define_flags, "train.launch_local", positional=None)


if __name__ == "__main__":
    run()
