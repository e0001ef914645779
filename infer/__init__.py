"""Inference: the commands (generate, score, bench, report, quantize, prune, compare) over three
subpackages, engine/ (run a model), timing/ (where its time goes), compress/ (make it cheaper)."""
