"""Every flag of `python -m train`, in one place: `TrainConfig` holds name, default and help.

`define_flags()` registers them with absl (only the command-line entry point calls it, so tests
build a `TrainConfig` directly); the model-choosing ones (--preset, sizes, --mesh, --dtype) through
model/flags.py, which every command shares. Size flags default to None: "take the preset's value".
"""

import dataclasses
from typing import Any

from absl import flags

from model.flags import SHARED, SIZE_FLAGS, define_model_flags


def _f(default: Any, help: str, **kw: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Model.
    preset: str = _f("tiny", "Model preset: decoders tiny, tiny_gpt, tiny_llama, gpt2_124m, "
                             "gpt2_350m, llama_1b, llama_7b; encoders tiny_bert, bert_base, "
                             "bert_large; encoder-decoders tiny_t5, t5_small, t5_base, "
                             "tiny_transformer, transformer_base. The size flags below override it. "
                             "Ignored with --init_from, whose model is used as it is.")
    num_layers: int | None = _f(None, "Transformer layers (default: the preset's).")
    d_model: int | None = _f(None, "Model width (default: the preset's).")
    num_heads: int | None = _f(None, "Query heads (default: the preset's).")
    num_kv_heads: int | None = _f(None, "Key/value heads; < num_heads is GQA (default: preset's).")
    mlp_dim: int | None = _f(None, "MLP hidden width (default: the preset's).")
    vocab_size: int | None = _f(None, "Vocabulary size; also the size of the tokenizer trained "
                                      "when --tokenizer is empty (default: the preset's).")
    dtype: str = _f("float32", "Compute dtype: float32 | bfloat16 | float16 (params and optimizer "
                               "state stay float32).")
    remat: str = _f("none", "Rematerialisation policy per layer: none | full | dots | "
                            "dots_no_batch.")
    attention: str = _f("xla", "Attention kernel: xla (model/blockwise.py, any device) | cudnn "
                               "(cuDNN flash attention, NVIDIA GPUs) | auto "
                               "(jax.nn.dot_product_attention picks).")
    scan_layers: bool = _f(True, "Stack layers with nn.scan, params on a leading layers axis "
                                 "(unrolled up to 12 layers; deeper, compile time is independent "
                                 "of depth).")
    param_init: str | None = _f(None, "How params start when training from scratch: normal "
                                      "(N(0, 0.02), GPT-2/BERT) or fan_in (N(0, 1/fan_in), T5 / "
                                      "Vaswani; see model/layers.py). Default: the preset's "
                                      "(fan_in for the encoder-decoder presets).")
    # Run.
    workdir: str = _f("", "Directory for checkpoints, metrics, config and tokenizer (required); "
                          "a workdir with checkpoints is resumed.")
    overwrite: bool = _f(False, "Start fresh in a --workdir that holds an earlier run (any "
                                "model): delete that run's checkpoints/, "
                                "damaged_checkpoints/, metrics.jsonl, "
                                "TensorBoard events.out.tfevents.*, loss.png, config.json, "
                                "flags.txt and tokenizer files once every other flag has been "
                                "checked; other files there are kept. Without it a workdir "
                                "holding a different model is refused.")
    steps: int = _f(1000, "Optimizer steps to train for (total, including resumed ones).")
    batch_size: int = _f(16, "Global batch size in sequences (all devices, all hosts).")
    seq_len: int = _f(256, "Tokens per training sequence.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (gradient accumulation).")
    seed: int = _f(0, "Seed for init, data order and any randomness of the objective.")
    data_shards: int = _f(0, "Split the data stream into this many shards, each with its own "
                             "documents and seeds; a process reads --data_shards / processes "
                             "of them. 0: one per process. Fixed, it makes the batches (and so "
                             "the loss curve) the same on any number of processes that divides "
                             "it, and lets a checkpoint's data position carry over between "
                             "them. Must divide --batch_size.")
    mesh: str = _f("", "Device mesh, e.g. data=2,fsdp=-1,tensor=2 (one -1 takes the remaining "
                       "devices); empty puts every device on data. With --dcn_mesh it splits "
                       "the devices of one host (TPU: one slice).")
    dcn_mesh: str = _f("", "Multi-host: how the mesh axes cross hosts (TPU: slices) over the "
                           "data-center network, written like --mesh, e.g. data=4; its sizes "
                           "multiply to the number of hosts and each mesh axis is --mesh's size "
                           "times this one's (--mesh=fsdp=-1 --dcn_mesh=data=4 on 4 hosts of 8 "
                           "GPUs: data 4 x fsdp 8). Empty: --mesh splits all devices of all "
                           "hosts in jax's device order.")
    distributed: str = _f("auto", "Join a multi-host run (jax.distributed.initialize) before "
                                  "touching a device: auto (when the environment says so: "
                                  "SLURM srun with several tasks, MESHLM_NUM_PROCESSES or "
                                  "MESHLM_COORDINATOR set e.g. by a Kubernetes JobSet, a TPU "
                                  "pod's TPU_WORKER_HOSTNAMES, or --coordinator_address), true "
                                  "(always; jax also finds SLURM, Open MPI and Cloud TPU VM "
                                  "peers), false (one process). See docs/multi-host.md.",
                   launch=True)
    coordinator_address: str = _f("", "host:port of process 0, which all processes dial "
                                      "(--distributed); empty: from the environment "
                                      "(MESHLM_COORDINATOR, SLURM, TPU).", launch=True)
    num_processes: int | None = _f(None, "Processes in a multi-host run, usually one per host "
                                         "(default: from the environment).", launch=True)
    process_id: int | None = _f(None, "This process's index in [0, --num_processes); process 0 "
                                      "writes the logs and metrics (default: from the "
                                      "environment).", launch=True)
    objective: str = _f("clm", "Training objective: clm (causal LM, decoder), mlm or mlm_nsp "
                               "(BERT pretraining, encoder), classify (fine-tune an encoder; "
                               "needs --init_from), seq2seq (source -> target, encoder_decoder), "
                               "span (T5 span corruption, encoder_decoder), distill (learn from "
                               "the logits of --teacher; its family's clm or mlm data).")
    init_from: str = _f("", "Workdir or converted model (python -m model.convert) to start "
                            "from: its model config and params (the optimizer starts fresh); its "
                            "tokenizer is used unless --tokenizer is set. Params the checkpoint "
                            "lacks (a new class head) start fresh.")
    teacher: str = _f("", "distill: the teacher, a training workdir or converted model "
                          "(python -m model.convert) whose logits the student learns from. Its "
                          "family picks the data and loss: decoder -> clm batches, encoder -> "
                          "mlm batches (an encoder_decoder is refused). The student (--preset "
                          "and size flags) must be of that family and share its vocab_size; "
                          "it uses the teacher's tokenizer unless --tokenizer is set.")
    distill_temperature: float = _f(2.0, "distill: softmax temperature T (> 0) of both models' "
                                         "logits in the KL term, which is scaled by T^2 "
                                         "(Hinton et al. 2015); the eval distill_kl is at T = 1.")
    distill_alpha: float = _f(0.5, "distill: weight in [0, 1] of the KL to the teacher; the "
                                   "cross-entropy with the data's labels weighs 1 - alpha.")
    # Data.
    data: str = _f("stdlib", "Training data: 'stdlib' (this Python's standard library: source "
                             "text; for seq2seq function code -> docstring; for classify which "
                             "package a function is from), 'stdlib_signatures' (seq2seq: function "
                             "code -> its signature, names only) or comma-separated .txt/.jsonl/.parquet "
                             "files, globs or directories (.jsonl fields: text; source/target for "
                             "seq2seq; text/label for classify).")
    eval_fraction: float = _f(0.02, "Fraction of documents (or examples) held out for evaluation.")
    target_len: int = _f(0, "Decoder tokens per example (seq2seq, span); --seq_len is the "
                            "encoder's. 0: --seq_len for seq2seq, what span corruption of "
                            "--seq_len tokens needs for span.")
    mask_rate: float = _f(0.15, "mlm, mlm_nsp: fraction of each row's tokens to predict (80% "
                                "become [MASK], 10% a random token, 10% stay).")
    nsp_weight: float = _f(0.0, "mlm_nsp: how many masked tokens each row's next-sentence loss "
                                "counts as. 0: the masked tokens of a full row, "
                                "round(--mask_rate * (--seq_len - 3)), so the loss is mean MLM + "
                                "mean NSP as in BERT.")
    noise_density: float = _f(0.15, "span: fraction of tokens corrupted.")
    mean_span_length: float = _f(3.0, "span: mean length in tokens of a corrupted span.")
    num_classes: int = _f(0, "classify: number of classes (the class head's size). 0: 8 for the "
                             "stdlib task (its 8 largest packages), the labels found in .jsonl "
                             "data.")
    label_smoothing: float = _f(0.0, "seq2seq, span: label smoothing of the training targets in "
                                     "[0, 1) (0.1 in Vaswani et al.); eval loss is unsmoothed.")
    bleu_examples: int = _f(64, "seq2seq: held-out examples greedily decoded for the eval BLEU "
                                "(sacrebleu, against the untruncated references); 0 disables.")
    tokenizer: str = _f("", "SentencePiece .model or Hugging Face tokenizer.json to use; empty "
                            "trains one on the data into WORKDIR/tokenizer.model.")
    # Optimizer.
    optimizer: str = _f("adamw", "adamw | adafactor | sgd.")
    learning_rate: float = _f(3e-4, "Peak learning rate.")
    schedule: str = _f("cosine", "Learning-rate schedule after warmup: constant | cosine | linear "
                                 "| rsqrt | wsd.")
    warmup_steps: int = _f(100, "Linear warmup steps from 0 to --learning_rate.")
    min_lr_ratio: float = _f(0.1, "Final learning rate as a fraction of the peak (cosine, linear, "
                                  "wsd).")
    decay_fraction: float = _f(0.2, "wsd: fraction of the steps spent decaying at the end.")
    weight_decay: float = _f(0.1, "Decoupled weight decay of matrices and embeddings.")
    beta1: float = _f(0.9, "Adam beta1 / SGD momentum.")
    beta2: float = _f(0.95, "Adam beta2 (second-moment decay).")
    clip_norm: float = _f(1.0, "Clip gradients to this global norm; 0 disables.")
    max_nonfinite: int = _f(10, "Stop after this many consecutive steps with a non-finite loss or "
                                "gradient, with one error line and exit code 1 (each such step "
                                "is skipped, leaving the params as they were, and counted in "
                                "skipped_steps; periodic checkpoints wait for a finite step). "
                                "Checked at log and save steps.")
    # Logging, evaluation, checkpoints.
    log_every: int = _f(10, "Steps between metrics lines (metrics.jsonl, TensorBoard, console).")
    eval_every: int = _f(100, "Steps between evaluations on the held-out split; 0 disables.")
    eval_batches: int = _f(10, "Held-out batches per evaluation (fewer if the split ends first).")
    nsp_eval_pairs: int = _f(1024, "mlm_nsp: evaluate on at least this many held-out sentence "
                                   "pairs (drawn shuffled across the held-out documents by "
                                   "--seed), reading more than --eval_batches batches if need "
                                   "be; 1024 pairs give a 95% interval of about +-3 points. "
                                   "Fewer if the split has fewer (raise --eval_fraction). 0: "
                                   "--eval_batches alone.")
    save_every: int = _f(100, "Steps between checkpoints (one is always saved at the end).")
    keep_checkpoints: int = _f(3, "Most recent checkpoints to keep.")
    keep_period: int = _f(0, "Also keep every checkpoint whose step is a multiple of this; 0: none.")

    def to_flags(self) -> dict[str, Any]:
        """The experiment's flags, for config.json and flag files: without the LAUNCH_FLAGS."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in LAUNCH_FLAGS}

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# How this process joins a job, not what the experiment is: never written to config.json or
# flags.txt, since a rerun is launched afresh (a recorded --process_id would give every host the
# id of the host that wrote the file).
LAUNCH_FLAGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("launch"))
MODEL_OVERRIDES = (*SIZE_FLAGS, "dtype", "remat", "attention", "scan_layers", "param_init")


def define_flags() -> None:
    """Registers one absl flag per `TrainConfig` field (idempotent)."""
    for field in dataclasses.fields(TrainConfig):
        if field.name in flags.FLAGS:
            continue
        help_text = field.metadata["help"]
        if field.default is not None:
            help_text += f" Default: {field.default}."
        kind = str(field.type)
        if field.name in SHARED:  # train's own default and help; --dtype stays a free string
            define_model_flags(field.name, **{field.name: {
                "default": field.default, "help": help_text, "choices": None}})
        elif "bool" in kind:
            flags.DEFINE_boolean(field.name, field.default, help_text)
        elif "int" in kind:
            flags.DEFINE_integer(field.name, field.default, help_text)
        elif "float" in kind:
            flags.DEFINE_float(field.name, field.default, help_text)
        else:
            flags.DEFINE_string(field.name, field.default, help_text)


def config_from_flags(values: flags.FlagValues = flags.FLAGS) -> TrainConfig:
    return TrainConfig(**{f.name: values[f.name].value for f in dataclasses.fields(TrainConfig)})


def flagfile_text(cfg: TrainConfig) -> str:
    """A flag file that reruns exactly this run (size flags resolved or left to the preset)."""
    lines = ["# Written by meshlm; rerun with: python -m train --flagfile=THIS_FILE"]
    for name, value in cfg.to_flags().items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        else:
            lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"
