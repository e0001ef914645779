"""The files of `infer.compare`: compare.json (the record), compare.md (one Markdown table, row
per variant) and compare.png (held-out loss against tokens/s at batch 1), written together."""

import json
import os
from typing import IO

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from runtime.files import atomic_write
from runtime.provenance import device_info, versions

NAMES = ("compare.json", "compare.md", "compare.png")
_FOOTNOTES = (
    ("- tok/s: generated tokens over the whole request, prefill included (the decode-only rate "
     "is in compare.json), so the speculative row, timed per request, compares like for like. "
     "TTFT: prefill and first token; TPOT: one decode step."),
    ("- speculative: infer/engine/speculative.py decodes one prompt at a time, so it is timed at batch "
     "1 only{others}; timed on held-out text (acceptance depends on it), the other rows on "
     "random ids (their speed does not). Its quality is the baseline's: the output is "
     "distributed as the target's own."),
    ("- int8+KV: the same weights as int8; its eval writes each row's keys and values to the "
     "int8 cache and attends to them there."),
)


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _ms(seconds: float | None) -> str:
    return _cell(None if seconds is None else 1e3 * seconds, ".2f")


def markdown(record: dict) -> str:
    cfg, rows = record["config"], record["rows"]
    sizes = cfg["batch_sizes"]
    device = record["device"]
    header = ["variant", "eval loss", "ppl", "params", "param MiB"]
    for b in sizes:
        header += [f"TTFT ms @{b}", f"TPOT ms @{b}", f"tok/s @{b}"]
    header += ["accept", "tok/target pass", "note"]
    title = (f"Ways to answer faster: {cfg['checkpoint']} on "
             f"{device.get('cpu_model', device['device_kind'])} ({device['platform']} "
             f"x{device['count']}), prompt {cfg['prompt_len']} + {cfg['new_tokens']} new tokens, "
             f"median of {cfg['repeats']}, held-out loss over {cfg['eval_batches']} batches.")
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        speed = {s["batch_size"]: s for s in r["speed"]}
        cells = [r["variant"], f"{r['eval_loss']:.4f}", f"{r['eval_ppl']:.2f}", f"{r['params']:,}",
                 f"{r['param_bytes'] / 2**20:.3f}"]
        for b in sizes:
            s = speed[b]
            cells += [_ms(s["ttft_s"]), _ms(s["tpot_s"]), _cell(s["tokens_per_s"], ",.1f")]
        cells += [_cell(r["acceptance_rate"], ".2f"), _cell(r["tokens_per_target_pass"], ".2f"),
                  r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    others = ", ".join(str(b) for b in sizes if b != 1)
    lines += ["", *_FOOTNOTES[:1],
              _FOOTNOTES[1].format(others=f" and its batch {others} cells are n/a" if others
                                   else ""), *_FOOTNOTES[2:]]
    return "\n".join(lines)


def plot(rows: list[dict], path: str | IO[bytes]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        x = next(s["tokens_per_s"] for s in r["speed"] if s["batch_size"] == 1)
        ax.scatter([x], [r["eval_loss"]], s=40)
        # Above and below in turn: int8 and int8+KV often land on one spot.
        ax.annotate(r["variant"], (x, r["eval_loss"]), textcoords="offset points",
                    xytext=(5, 5 if i % 2 else -12), fontsize=9)
    ax.set_xlabel("tokens/s at batch 1 (whole request)")
    ax.set_ylabel("held-out eval loss")
    ax.set_title("Quality vs speed: lower right is better", fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_outputs(out: str, record: dict, command: str) -> str:
    """Adds device, versions and command to `record` and writes the three files, each to a temp
    name first and renamed into place only once all are written. Returns the text to print."""
    record = {"device": device_info(), "versions": versions(), "command": command, **record}
    text = markdown(record)
    os.makedirs(out, exist_ok=True)
    # Nested, so that no file is renamed in before all three are written.
    with (atomic_write(os.path.join(out, "compare.json")) as js,
          atomic_write(os.path.join(out, "compare.md")) as md,
          atomic_write(os.path.join(out, "compare.png"), "wb") as png):
        json.dump(record, js, indent=2)
        js.write("\n")
        md.write(text + "\n")
        plot(record["rows"], png)
    return text + "\n\n" + f"wrote {', '.join(os.path.join(out, n) for n in NAMES)}"
