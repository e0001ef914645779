"""The inference engine: loading a model, prefill + decode on device with a KV cache, sampling,
beam search and speculative decoding. The commands in infer/ are thin shells over it."""
