"""Tiny random-init Hugging Face models (built offline from small configs) for the interop tests,
and the logits of ours vs theirs on the same tokens."""

import jax.numpy as jnp
import numpy as np
import torch
import transformers as hf

from infer.engine.load import Loaded

# name -> (class, config). Shapes cover GQA (kv = heads, heads/2, 1), untied outputs, odd vocab
# sizes, and every head of BERT and both T5 generations.
CASES = {
    "gpt2": (hf.GPT2LMHeadModel, hf.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=101, n_positions=64)),
    "gpt2_untied_wide": (hf.GPT2LMHeadModel, hf.GPT2Config(
        n_embd=48, n_layer=3, n_head=3, n_inner=80, vocab_size=97, n_positions=48,
        tie_word_embeddings=False)),
    "llama_mha": (hf.LlamaForCausalLM, hf.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=103, max_position_embeddings=64,
        tie_word_embeddings=False)),
    "llama_gqa_tied": (hf.LlamaForCausalLM, hf.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, rope_theta=500.0,
        tie_word_embeddings=True)),
    "llama_mqa": (hf.LlamaForCausalLM, hf.LlamaConfig(
        hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=1, vocab_size=111, max_position_embeddings=64)),
    "bert_mlm": (hf.BertForMaskedLM, hf.BertConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=105, max_position_embeddings=64)),
    "bert_classify": (hf.BertForSequenceClassification, hf.BertConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        vocab_size=99, max_position_embeddings=64, num_labels=5, type_vocab_size=3)),
    "bert_pretraining": (hf.BertForPreTraining, hf.BertConfig(
        hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=4,
        vocab_size=100, max_position_embeddings=32, hidden_act="gelu_new")),
    "t5_v1_0": (hf.T5ForConditionalGeneration, hf.T5Config(
        d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, vocab_size=107)),
    "t5_v1_1": (hf.T5ForConditionalGeneration, hf.T5Config(
        d_model=32, d_kv=16, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=3,
        vocab_size=90, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        relative_attention_num_buckets=16, relative_attention_max_distance=20)),
}
DECODERS = ("gpt2", "gpt2_untied_wide", "llama_mha", "llama_gqa_tied", "llama_mqa")


def build(name: str, seed: int = 0) -> torch.nn.Module:
    cls, config = CASES[name]
    torch.manual_seed(seed)
    model = cls(config).eval()
    # Random init leaves some tensors constant (LayerNorm ones, zero biases); perturb every
    # tensor so that a swapped or transposed tensor shows in the logits.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def tokens(vocab: int, batch: int = 2, length: int = 11, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def both_logits(name: str, theirs: torch.nn.Module, ours: Loaded) -> list[tuple[str, np.ndarray,
                                                                                 np.ndarray]]:
    """[(output name, our float32 array, theirs)] for every head the model has."""
    ids = tokens(theirs.config.vocab_size)
    apply = ours.model.apply
    with torch.no_grad():
        if name in DECODERS:
            return [("logits", np.asarray(apply(ours.params, jnp.asarray(ids))),
                     theirs(torch.tensor(ids)).logits.numpy())]
        if name.startswith("t5"):
            dec = ids[:, :7]
            return [("logits", np.asarray(apply(ours.params, jnp.asarray(ids), jnp.asarray(dec))),
                     theirs(input_ids=torch.tensor(ids),
                            decoder_input_ids=torch.tensor(dec)).logits.numpy())]
        types = (ids % 2).astype(np.int32)  # exercise the token-type table
        out = apply(ours.params, jnp.asarray(ids), token_types=jnp.asarray(types))
        result = theirs(torch.tensor(ids), token_type_ids=torch.tensor(types))
    if name == "bert_mlm":
        return [("logits", np.asarray(out["logits"]), result.logits.numpy())]
    if name == "bert_classify":
        return [("class_logits", np.asarray(out["class_logits"]), result.logits.numpy())]
    return [("logits", np.asarray(out["logits"]), result.prediction_logits.numpy()),
            ("class_logits", np.asarray(out["class_logits"]),
             result.seq_relationship_logits.numpy())]
