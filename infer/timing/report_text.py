"""report.md of `infer.report`: what the measurements say in sentences, then the tables."""

from infer.timing.components import COMPONENTS

_COLUMNS = (*COMPONENTS, "unattributed", "host")


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3f}" if abs(seconds) < 1 else f"{1e3 * seconds:,.0f}"


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _find(points: list[dict], phase: str, batch: int, context: int) -> dict | None:
    for p in points:
        if (p["phase"], p["batch"], p["context"]) == (phase, batch, context):
            return p
    return None


def _parts(p: dict) -> dict[str, float]:
    parts = {name: p["components"][name]["time_s"] for name in COMPONENTS}
    parts["unattributed"] = p["unattributed_s"]
    parts["host"] = p["host_overhead_s"]
    return parts


def _largest(p: dict) -> tuple[str, float]:
    name = max(COMPONENTS, key=lambda n: p["components"][n]["time_s"])
    return name, p["components"][name]["time_s"] / p["step_device_s"]


def findings(report: dict) -> list[str]:
    cfg, points = report["config"], report["points"]
    ridge = report["device"]["ridge_flops_per_byte"]
    b, c = cfg["batch"], cfg["context"]
    lines = []
    ref = _find(points, "decode", b, c)
    if ref:
        name, share = _largest(ref)
        f = ref["step_formula"]
        lines.append(
            f"Decode at batch {b}, context {c}: {_ms(ref['step_device_s'])} ms a step, "
            f"{ref['tokens_per_s']:,.0f} tokens/s with the loop on device "
            f"({ref['tokens_per_s_host_loop']:,.0f} launched step by step from the host). "
            f"The largest part is {name} ({100 * share:.0f}% of the step). The step moves "
            f"{_si(f['bytes'], 'B')} for {_si(f['flops'], 'FLOP')}: {f['intensity']:.2f} FLOP/B "
            f"against a ridge of {ridge:.1f}, so it is {f['bound']}-bound and reaches "
            f"{100 * ref['mbu']:.0f}% of the bandwidth.")
    by_batch = sorted((p for p in points if p["phase"] == "decode" and p["context"] == c),
                      key=lambda p: p["batch"])
    if len(by_batch) > 1:
        lo, hi = by_batch[0], by_batch[-1]
        lines.append(
            f"Batch {lo['batch']} to {hi['batch']} at context {c}: the decode step grows "
            f"{hi['step_device_s'] / lo['step_device_s']:.1f}x while tokens/s grows "
            f"{hi['tokens_per_s'] / lo['tokens_per_s']:.1f}x. Weights are read once per step "
            f"whatever the batch; what grows is the KV cache read and the matmul work "
            f"(intensity {lo['step_formula']['intensity']:.1f} -> "
            f"{hi['step_formula']['intensity']:.1f} FLOP/B, {hi['step_formula']['bound']}-bound "
            f"at batch {hi['batch']}).")
    by_context = sorted((p for p in points if p["phase"] == "decode" and p["batch"] == b),
                        key=lambda p: p["context"])
    if len(by_context) > 1:
        lo, hi = by_context[0], by_context[-1]
        share = [p["components"]["attention"]["time_s"] / p["step_device_s"] for p in (lo, hi)]
        lines.append(
            f"Context {lo['context']} to {hi['context']} at batch {b}: the decode step goes "
            f"from {_ms(lo['step_device_s'])} to {_ms(hi['step_device_s'])} ms and attention's "
            f"share from {100 * share[0]:.0f}% to {100 * share[1]:.0f}%: every step reads the "
            f"whole KV cache, which grows with the context.")
    pre = _find(points, "prefill", b, c)
    if pre:
        name, share = _largest(pre)
        f = pre["step_formula"]
        lines.append(
            f"Prefill of {c} tokens at batch {b}: {_ms(pre['step_device_s'])} ms "
            f"({1e6 * pre['step_device_s'] / pre['tokens_per_step']:.1f} us a token, "
            f"{100 * pre['mfu']:.0f}% of peak FLOP/s); {name} is {100 * share:.0f}% of it; "
            f"{f['intensity']:.0f} FLOP/B, {f['bound']}-bound. Prefill is the compute-bound "
            f"half of inference, decode the memory-bound half.")
    decode = [p for p in points if p["phase"] == "decode"]
    if decode:
        worst = max(decode, key=lambda p: p["host_overhead_s"] / p["step_host_s"])
        lines.append(
            f"Launching each decode step from the host costs up to "
            f"{_ms(worst['host_overhead_s'])} ms a step "
            f"({100 * worst['host_overhead_s'] / worst['step_host_s']:.0f}% of the host-driven "
            f"step at batch {worst['batch']}, context {worst['context']}); the engine's "
            f"on-device while_loop does not pay it.")
    fast = sorted({n for p in points for n, c in p["components"].items()
                   if c["time_s"] > 0 and c["roofline_s"] > 1.05 * c["time_s"]})
    if fast:
        lines.append(
            f"Some parts beat the roofline ({', '.join(fast)}): their working set fits in the "
            f"caches, so main-memory bandwidth is not their ceiling; they would fall to it at "
            f"larger sizes.")
    if points:
        gap = max(points, key=lambda p: abs(p["unattributed_s"]) / p["step_device_s"])
        frac = gap["unattributed_s"] / gap["step_device_s"]
        why = ("not in any part (residual adds, the layer scan slicing and restacking the KV "
               "cache, layout copies)" if frac > 0 else "saved by fusing across parts")
        lines.append(
            f"The whole step and the sum of its isolated parts differ most at {gap['phase']} "
            f"batch {gap['batch']}, context {gap['context']}: {100 * frac:+.0f}% of the step is "
            f"{why}.")
    return lines


def _table(points: list[dict], key: str) -> list[str]:
    head = (f"| {key} | step ms | host ms | " + " | ".join(_COLUMNS)
            + " | tokens/s | MBU | MFU |")
    rows = [head, "|" + "---:|" * (len(_COLUMNS) + 6)]
    for p in points:
        parts = _parts(p)
        step = p["step_device_s"]
        cells = [f"{_ms(parts[n])} ({100 * parts[n] / step:.0f}%)" for n in _COLUMNS]
        rows.append(f"| {p[key]} | {_ms(step)} | {_ms(p['step_host_s'])} | " + " | ".join(cells)
                    + f" | {p['tokens_per_s']:,.0f} | {100 * p['mbu']:.1f}% "
                      f"| {100 * p['mfu']:.1f}% |")
    return rows


def _roofline_table(p: dict) -> list[str]:
    rows = [("| part | measured ms | roofline ms | of roofline | FLOPs (ours / XLA) | "
            "bytes (ours / XLA) | FLOP/B | bound |"), "|---|" + "---:|" * 6 + "---|"]
    for name in COMPONENTS:
        c = p["components"][name]
        reach = c["roofline_s"] / c["time_s"] if c["time_s"] > 0 else float("nan")
        rows.append(
            f"| {name} | {_ms(c['time_s'])} | {_ms(c['roofline_s'])} | {100 * reach:.0f}% | "
            f"{_si(c['formula']['flops'], '')} / {_si(c['xla']['flops'], '')} | "
            f"{_si(c['formula']['bytes'], 'B')} / {_si(c['xla']['bytes'], 'B')} | "
            f"{c['intensity']:.2f} | {c['bound']} |")
    return rows


def markdown(report: dict, plots: list[str]) -> str:
    cfg, dev, points = report["config"], report["device"], report["points"]
    b, c = cfg["batch"], cfg["context"]
    out = [
        "# Inference timing characteristics", "",
        (f"Model: {cfg['source']}, {cfg['params'] / 1e6:.2f}M params, {cfg['model']['dtype']}, "
        f"mesh {cfg['mesh']}, sampling {cfg['sampling']}.  "),
        (f"Device: {dev['name']} ({dev['platform']} x{dev['count']}); peak "
        f"{_si(dev['peak_flops'], 'FLOP/s')} ({dev['peak_flops_source']}), bandwidth "
        f"{_si(dev['bandwidth'], 'B/s')} ({dev['bandwidth_source']}); ridge "
        f"{dev['ridge_flops_per_byte']:.1f} FLOP/B.  "),
        f"Command: `{report['command']}`", "", "## What the numbers say", "",
        *[f"- {line}" for line in findings(report)], "",
        ("Columns below: time per step in ms (share of the on-device step). `unattributed` is the "
        "on-device step minus the sum of its parts; `host` is what launching each step from the "
        "host adds. MBU and MFU use our byte and FLOP formulas against the peaks above."), ""]
    sections = [("Decode across context", "decode", "batch", b, "context"),
                ("Decode across batch", "decode", "context", c, "batch"),
                ("Prefill across context", "prefill", "batch", b, "context"),
                ("Prefill across batch", "prefill", "context", c, "batch")]
    for title, phase, fixed, value, key in sections:
        rows = sorted((p for p in points if p["phase"] == phase and p[fixed] == value),
                      key=lambda p: p[key])
        if rows:
            out += [f"## {title} ({fixed} {value})", "", *_table(rows, key), ""]
    biggest = max(cfg["batch_sizes"])
    for phase, batch in (("decode", b), ("decode", biggest), ("prefill", b)):
        p = _find(points, phase, batch, c)
        if p:
            out += [f"## Roofline: {phase}, batch {batch}, context {c}", "",
                    *_roofline_table(p), ""]
    out += ["## How it was measured", "",
            ("Each part runs alone as a compiled program: the model's own module with its real "
            "parameters inside an on-device loop that steps through the layers and whose output "
            "feeds the next iteration, timed at 1 and at n iterations; (T(n) - T(1)) / (n - 1) "
            "removes the launch cost. The whole step (the real model, sampling included) is "
            "timed the same way and once more launched from the host per step. Per-layer parts "
            "are multiplied by the layer count (norms: 2 per layer + the final one). Roofline "
            "time is max(FLOPs / peak, bytes / bandwidth) from our formulas; XLA's cost analysis "
            "of each part is shown beside them (XLA counts every intermediate it reads and "
            "writes, so its bytes are an upper bound)."), ""]
    out += [f"![{name}]({name})" for name in plots]
    return "\n".join(out) + "\n"
