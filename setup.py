"""meshlm: sharded Transformer language models in JAX/Flax (GPT/Llama, BERT, T5)."""

from setuptools import find_packages, setup

# Lower bounds are the versions tested on CPU (Python 3.11) and on the GPU machine (Python 3.12).
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "sentencepiece>=0.2.0",
    "tokenizers>=0.19",  # the tokenizer.json of models imported from Hugging Face
    "absl-py>=2.1",
    "chex>=0.1.90",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "safetensors>=0.4",
    "numpy>=1.26",
    "pyarrow>=15",
    "sacrebleu>=2.4",  # BLEU in seq2seq eval
]

setup(
    name="meshlm",
    version="0.1.0",
    description="Sharded Transformer language models in JAX/Flax: train, checkpoint, infer.",
    python_requires=">=3.11",
    packages=find_packages(include=["runtime*", "model*", "data*", "train*", "infer*", "benchmarks*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch is pinned to the CPU wheel so tests never pull a multi-GB CUDA build.
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.5", "import-linter>=2.1", "torch==2.13.0", "transformers>=4.45", "zstandard>=0.22"],
        "gpu": ["jax[cuda12]>=0.10.2"],
        "tpu": ["jax[tpu]>=0.10.2"],
    },
    entry_points={"console_scripts": ["meshlm-train=train.__main__:run"]},
)
