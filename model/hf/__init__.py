"""Hugging Face interop: config and tensor-name maps per architecture (gpt2.py, llama.py,
bert.py, t5.py), the streaming tensor mover (tensors.py) and safetensors files (files.py).
`python -m model.convert` is the command."""
