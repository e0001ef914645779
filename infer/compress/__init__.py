"""Making a model cheaper to run: structured pruning of its params and the comparison table of
every compressed variant (int8 itself lives in model/quant.py, next to the layers it changes)."""
