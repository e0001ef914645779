"""The PNG plots of `infer.report`: stacked time per component, tokens/s vs batch, latency vs
context, and every part of a step placed on the device's roofline."""

import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

from infer.timing.components import COMPONENTS

_PARTS = (*COMPONENTS, "unattributed", "host")
_COLORS = dict(zip(_PARTS, plt.get_cmap("tab10").colors, strict=False))


def _select(points: list[dict], phase: str, fixed: str, value: int, key: str) -> list[dict]:
    return sorted((p for p in points if p["phase"] == phase and p[fixed] == value),
                  key=lambda p: p[key])


def _stacked(ax, rows: list[dict], key: str, title: str) -> None:
    """Per-token time (us) per part; a negative `unattributed` (fusion won) is not drawn."""
    labels = [str(p[key]) for p in rows]
    bottom = np.zeros(len(rows))
    for part in _PARTS:
        values = []
        for p in rows:
            t = {"unattributed": max(p["unattributed_s"], 0.0), "host": p["host_overhead_s"]}.get(
                part, p["components"].get(part, {}).get("time_s", 0.0))
            values.append(1e6 * t / p["tokens_per_step"])
        ax.bar(labels, values, bottom=bottom, color=_COLORS[part], label=part)
        bottom += np.array(values)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(key)
    ax.set_ylabel("us per token")
    ax.grid(axis="y", alpha=0.3)


def components_plot(report: dict, path: str) -> None:
    cfg, points = report["config"], report["points"]
    b, c = cfg["batch"], cfg["context"]
    panels = [("decode", "batch", b, "context"), ("prefill", "batch", b, "context"),
              ("decode", "context", c, "batch"), ("prefill", "context", c, "batch")]
    # Only the phases that were measured (--phases) get panels.
    panels = [(panel, rows) for panel in panels if (rows := _select(points, *panel))]
    cols = 2 if len(panels) > 1 else 1
    rows_of_panels = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_of_panels, cols, figsize=(6 * cols, 4 * rows_of_panels),
                             squeeze=False)
    for ax, ((phase, fixed, value, key), rows) in zip(axes.flat, panels, strict=False):
        _stacked(ax, rows, key, f"{phase}, {fixed} {value}: time per token by part")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(_PARTS), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95 if rows_of_panels > 1 else 0.9))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_plot(report: dict, path: str) -> None:
    cfg, points = report["config"], report["points"]
    rows = _select(points, "decode", "context", cfg["context"], "batch")
    batches = [p["batch"] for p in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(batches, [p["tokens_per_s"] for p in rows], "o-", label="measured, loop on device")
    ax.plot(batches, [p["tokens_per_s_host_loop"] for p in rows], "s--",
            label="measured, step launched from host")
    ax.plot(batches, [p["batch"] / p["step_formula"]["roofline_s"] for p in rows], ":",
            color="gray", label="roofline limit (formula)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"decode throughput vs batch (context {cfg['context']})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def latency_plot(report: dict, path: str) -> None:
    cfg, points = report["config"], report["points"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for phase, marker in (("decode", "o"), ("prefill", "s")):
        rows = _select(points, phase, "batch", cfg["batch"], "context")
        contexts = [p["context"] for p in rows]
        what = "one decode step" if phase == "decode" else "prefill (TTFT)"
        ax.plot(contexts, [1e3 * p["step_device_s"] for p in rows], marker + "-",
                label=f"{what}, measured")
        ax.plot(contexts, [1e3 * p["step_formula"]["roofline_s"] for p in rows], ":",
                label=f"{what}, roofline limit")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("ms")
    ax.set_title(f"latency vs context (batch {cfg['batch']})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def roofline_plot(report: dict, path: str) -> None:
    cfg, dev, points = report["config"], report["device"], report["points"]
    b, c = cfg["batch"], cfg["context"]
    chosen = [("decode", b, "o"), ("decode", max(cfg["batch_sizes"]), "^"), ("prefill", b, "s")]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    intensities = []
    for phase, batch, marker in chosen:
        p = next((q for q in points if (q["phase"], q["batch"], q["context"]) ==
                  (phase, batch, c)), None)
        if p is None:
            continue
        for name in COMPONENTS:
            comp = p["components"][name]
            if comp["time_s"] <= 0 or comp["formula"]["flops"] <= 0:
                continue
            intensities.append(comp["intensity"])
            ax.scatter(comp["intensity"], comp["achieved_flops_per_s"], marker=marker,
                       color=_COLORS[name], s=50, edgecolors="black", linewidths=0.4)
        ax.scatter([], [], marker=marker, color="white", edgecolors="black",
                   label=f"{phase}, batch {batch}, context {c}")
    for name in COMPONENTS:
        ax.scatter([], [], color=_COLORS[name], label=name)
    lo = min(intensities + [dev["ridge_flops_per_byte"]]) / 4
    hi = max(intensities + [dev["ridge_flops_per_byte"]]) * 4
    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.minimum(dev["peak_flops"], x * dev["bandwidth"]), color="black",
            label=f"roofline ({dev['name']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title("each part of a step on the roofline", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_all(report: dict, out: str) -> list[str]:
    """Draws the four plots into `out`; returns their file names."""
    plots = {"components.png": components_plot, "throughput_vs_batch.png": throughput_plot,
             "latency_vs_context.png": latency_plot, "roofline.png": roofline_plot}
    for name, draw in plots.items():
        draw(report, os.path.join(out, name))
    return list(plots)
