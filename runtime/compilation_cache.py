"""JAX's persistent compilation cache for the inference commands: a program compiled once (for a
model shape, batch, prompt bucket and token budget) is read back from disk by the next process
instead of being compiled again inside its time to first token. The executables are the same
either way; the cache key covers the program, the compiler options and the devices.

The directory is --compilation_cache (default $XDG_CACHE_HOME/meshlm/jax, ~/.cache/meshlm/jax
without it); an empty value turns the cache off. Entries are written atomically by JAX, so
concurrent commands may share one directory; deleting it only costs recompilation."""

import os

import jax
from absl import flags, logging


def default_directory() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "meshlm", "jax")


def define_flag() -> None:
    flags.DEFINE_string("compilation_cache", default_directory(),
                        "Directory of JAX's persistent compilation cache: later runs of the same "
                        "model and shapes load compiled programs from it instead of compiling "
                        "again. Empty turns it off.")


def enable(directory: str) -> None:
    """Points JAX's persistent cache at `directory` (nothing if empty). A directory that cannot be
    created only costs speed: a warning, and the command compiles as without a cache."""
    if not directory:
        return
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        logging.warning("--compilation_cache=%s is unusable (%s); compiling without it",
                        directory, e)
        return
    jax.config.update("jax_compilation_cache_dir", directory)
    # JAX skips programs that compile in under 1 s by default; a small model's generate program
    # compiles in about that, and those seconds are most of its cold time to first token.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
