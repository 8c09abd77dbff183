"""What a run looks like on paper: the terminal and markdown tables, the speed targets, the PNG
of ratios, the README's bench section and the JSON (every value finite or null).

Everything here reads the result dict ``convkit bench`` writes as JSON, so a report can be
rewritten from an earlier run's JSON without measuring (``--from-json``).
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

from convkit.bench import weighted
from convkit.bench.shapes import WORKLOADS


def _fmt(v, spec: str, empty: str = "-") -> str:
    return empty if v is None else format(v, spec)


def _ms(v: float) -> str:
    """Milliseconds to 4 significant digits, never in exponent form."""
    return f"{v:.0f}" if v >= 1e4 else f"{v:.4g}"


def _ratio(v: float) -> str:
    """A time ratio to 3 significant digits, never in exponent form."""
    return f"{v:.0f}" if v >= 1e3 else f"{v:.4f}" if v < 1e-3 else f"{v:.3g}"


def progress_line(i: int, total: int, row: dict) -> str:
    """One line per measured row, printed as it finishes."""
    width = len(str(total))
    head = f"[{i:>{width}}/{total}] {row['shape']:<16} {row['op']:<15} {row['impl']:<10}"
    if row["status"] != "ok":
        return f"{head} {row['status']}{': ' + row['note'] if row['note'] else ''}"
    spread = f"({_ms(row['q1_ms'])}-{_ms(row['q3_ms'])})"
    rate = (f"{row['gflops']:7.1f} GFLOP/s" if row["gflops"] is not None else
            f"{row['gbps']:7.1f} GB/s   " if row["gbps"] is not None else " " * 15)
    roof = (f"{row['roof_pct']:5.1f}% {'eff. roof' if effective(row) else 'roof'}"
            if row["roof_pct"] is not None else " " * 10)
    ratio = f"{_ratio(row['ratio']):>7}x" if row["ratio"] is not None else " " * 8
    auto = f" auto->{row['auto_choice']}" if row["auto_choice"] else ""
    first = f"first {row['first_call_ms']:8.1f} ms"
    return f"{head} {_ms(row['median_ms']):>9} ms {spread:<17} {first} {ratio} {rate} {roof}{auto}"


def effective(row: dict) -> bool:
    """Whether the row's GFLOP/s and % roof are "effective": the direct convolution's FLOPs
    over a time in which Winograd did fewer multiplies (so above 100 % of the SGEMM roof is
    possible)."""
    return row["impl"] == "winograd" or "winograd" in (row.get("auto_choice") or "")


def _impl_columns(rows: Sequence[dict]) -> List[str]:
    order = ["torch", "torch-tf32", "direct", "im2col", "winograd", "auto", "convkit"]
    present = {r["impl"] for r in rows}
    return [c for c in order if c in present]


def _cell(row: Optional[dict]) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return row["status"]
    cell = _ms(row["median_ms"])
    if row["ratio"] is not None:
        cell += f" ({_ratio(row['ratio'])}x)"
    return cell


def summary_table(rows: Sequence[dict], markdown: bool = False) -> str:
    """One line per (shape, op): median ms per implementation with the ratio to torch in
    brackets, the best convkit GFLOP/s (or GB/s) and % of the roof, and what auto chose.
    Ops with the same implementations share a table (conv/train apart from ReLU/pool)."""
    keys: List[Tuple[str, str]] = []
    by_key: Dict[Tuple[str, str], Dict[str, dict]] = {}
    for r in rows:
        key = (r["shape"], r["op"])
        if key not in by_key:
            keys.append(key)
            by_key[key] = {}
        by_key[key][r["impl"]] = r
    tables: Dict[Tuple[str, ...], List[List[str]]] = {}
    for key in keys:
        group = by_key[key]
        cols = tuple(_impl_columns(list(group.values())))
        convkit = [r for r in group.values() if not r["impl"].startswith("torch")
                   and r["status"] == "ok"]
        best = min(convkit, key=lambda r: r["median_ms"]) if convkit else None
        if best is None:
            best_s = ""
        elif best["gflops"] is not None:
            best_s = (f"{best['gflops']:.1f} GFLOP/s ({_fmt(best['roof_pct'], '.0f')}%"
                      f"{' effective' if effective(best) else ''}) {best['impl']}")
        elif best["gbps"] is not None:
            best_s = (f"{best['gbps']:.1f} GB/s ({_fmt(best['roof_pct'], '.0f')}%) "
                      f"{best['impl']}")
        else:
            best_s = best["impl"]
        auto = (group.get("auto") or {}).get("auto_choice") or ""
        tables.setdefault(cols, []).append(
            [key[0], key[1], *[_cell(group.get(c)) for c in cols], best_s, auto])
    out = []
    for cols, lines in tables.items():
        header = ["shape", "op", *[f"{c} ms" for c in cols], "best convkit", "auto chose"]
        out += [_grid(header, lines, markdown), ""]
    return "\n".join(out).rstrip("\n")


def _grid(header: Sequence[str], lines: Sequence[Sequence[str]], markdown: bool) -> str:
    """A markdown table, or columns aligned with two spaces and a dashed rule under the header."""
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |",
                          "|" + "|".join("---" for _ in header) + "|",
                          *["| " + " | ".join(line) + " |" for line in lines]])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths)),
                      *[fmt.format(*line).rstrip() for line in lines]])


def network_tables(rows: Sequence[dict], markdown: bool = False) -> str:
    """Per workload and convkit implementation measured: one line per distinct conv (count,
    shape, torch / convkit ms and ratio of each pass, the time it costs over torch weighted by
    its count, what auto chose), the weighted total against torch, and the (conv, pass) terms
    with the most time over torch. Empty string when no workload was measured."""
    out = []
    for s in weighted.summaries(rows):
        workload, impl = WORKLOADS[s["workload"]], s["impl"]
        header = ["conv", "count", "shape",
                  *[f"{weighted.PASS_LABELS[op]}: torch / {impl} ms" for op in s["ops"]],
                  f"count x ({impl} - torch) ms", "auto chose"]
        lines = []
        for shape, count in workload.convs:
            terms = {t["op"]: t for t in s["terms"] if t["shape"] == shape.name}
            cells = [f"{_ms(t['torch_ms'])} / {_ms(t['convkit_ms'])} ({_ratio(t['ratio'])}x)"
                     if t else "-" for t in (terms.get(op) for op in s["ops"])]
            excess = sum(t["excess_ms"] for t in terms.values())
            lines.append([shape.name, str(count), shape.describe(), *cells,
                          f"{excess:+.4g}" if terms else "-",
                          weighted.combined_choice(list(terms.values()))])
        out += [f"{workload.name} ({workload.description}), {impl} vs torch:", "",
                _grid(header, lines, markdown), "", _weighted_line(s, markdown)]
        top = weighted.largest_excess(s)
        if top:
            out.append(f"Most time over torch, count x ({impl} - torch) ms:")
            out += [f"{'-' if markdown else ' '} {j}. {t['shape']} "
                    f"{weighted.PASS_LABELS[t['op']]}: {t['excess_ms']:+.4g} ms "
                    f"(x{t['count']}, {_ms(t['torch_ms'])} -> {_ms(t['convkit_ms'])} ms, "
                    f"{_ratio(t['ratio'])}x" + (f", {t['auto_choice']}" if t["auto_choice"]
                                                 else "") + ")"
                    for j, t in enumerate(top, 1)]
        elif s["terms"]:
            out.append(f"No pass of {impl} is slower than torch.")
        out.append("")
    return "\n".join(out).rstrip("\n")


def _weighted_line(s: dict, markdown: bool) -> str:
    """The weighted total of one network summary, in words."""
    passes = " + ".join(weighted.PASS_LABELS[op] for op in s["ops"])
    bold = "**" if markdown else ""
    if s["ratio"] is None:
        missing = ", ".join(f"{n} {op}" for n, op in s["missing"][:4])
        more = f" and {len(s['missing']) - 4} more" if len(s["missing"]) > 4 else ""
        return (f"Weighted {s['workload']}, {s['impl']}: incomplete, no measured torch and "
                f"{s['impl']} row for {missing}{more}.")
    partial = "" if s["complete"] else " (not every pass was measured: not the fwd+bwd total)"
    return (f"{bold}Weighted {s['workload']}, {s['impl']}: sum of count x ({passes}) = "
            f"{_ms(s['convkit_ms'])} ms vs torch {_ms(s['torch_ms'])} ms = "
            f"{_ratio(s['ratio'])}x{bold} ({s['num_convs']} convs, {s['distinct']} distinct; "
            f"same run){partial}")


def detail_table(rows: Sequence[dict]) -> str:
    """Markdown table with every field a reader may want per row."""
    header = ["shape", "op", "impl", "median ms", "IQR ms", "min-max ms", "first call ms",
              "ratio", "ratio of mins", "GFLOP/s", "GB/s", "% roof", "auto chose", "rel err",
              "level"]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        ok = r["status"] == "ok"
        cells = [r["shape"], r["op"], r["impl"],
                 _ms(r["median_ms"]) if ok else r["status"],
                 f"{_ms(r['q1_ms'])}-{_ms(r['q3_ms'])}" if ok else "",
                 f"{_ms(r['min_ms'])}-{_ms(r['max_ms'])}" if ok else "",
                 _fmt(r["first_call_ms"], ".1f", ""),
                 "" if r["ratio"] is None else _ratio(r["ratio"]),
                 "" if r["ratio_min"] is None else _ratio(r["ratio_min"]),
                 _fmt(r["gflops"], ".1f", ""), _fmt(r["gbps"], ".1f", ""),
                 _fmt(r["roof_pct"], ".1f", "") + (" effective" if ok and effective(r)
                                                   and r["roof_pct"] is not None else ""),
                 r["auto_choice"] or "",
                 _fmt(r["max_rel_error"], ".1e", ""), r["level"]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def target_checks(rows: Sequence[dict]) -> List[Tuple[str, str, str]]:
    """The speed targets of the CPU-speed issue, checked on this run's rows.

    Returns (target, measured, "yes" / "no") for every target whose rows were measured; ratios
    are ``algorithm="auto"`` against torch, as a user would run convkit.
    """
    get = {(r["shape"], r["op"], r["impl"]): r for r in rows if r["status"] == "ok"}

    def ratio(shape, op, impl="auto"):
        r = get.get((shape, op, impl))
        return None if r is None else r["ratio"]

    checks = []

    def check(target, values, ok):
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            shown = ", ".join(f"{k} {_ratio(v)}x" if k != "roof" else f"{v:.0f}% roof"
                              for k, v in values.items())
            checks.append((target, shown, "yes" if all(ok(v) for v in values.values())
                           else "no"))

    check("SimpleCNN training step <= 1.0x torch (stretch 0.8x)",
          {"train_step": ratio("simplecnn-train", "train_step")}, lambda v: v <= 1.0)
    check("SimpleCNN conv layers, fwd+bwd <= 1.5x torch",
          {"conv1": ratio("simplecnn-conv1", "conv_fwd_bwd"),
           "conv2": ratio("simplecnn-conv2", "conv_fwd_bwd")}, lambda v: v <= 1.5)
    check("conv1 backward faster than torch",
          {"bwd_input": ratio("simplecnn-conv1", "conv_bwd_input"),
           "bwd_weight": ratio("simplecnn-conv1", "conv_bwd_weight")}, lambda v: v < 1.0)
    check("224x224 3-channel convs faster than torch (fwd+bwd)",
          {"resnet-stem": ratio("resnet-stem", "conv_fwd_bwd"),
           "vgg-first": ratio("vgg-first", "conv_fwd_bwd")}, lambda v: v < 1.0)
    networks = weighted.weighted_ratios(rows, "auto")
    check("ResNet-18 convs fwd+bwd <= 1.1x torch (weighted)",
          {"weighted": networks.get("resnet18-convs")}, lambda v: v <= 1.1)
    check("ResNet-50 convs fwd+bwd <= 1.1x torch (weighted)",
          {"weighted": networks.get("resnet50-convs")}, lambda v: v <= 1.1)
    # issue 22 (Winograd): fewer multiplies than torch's direct convolution
    check("ResNet-18 convs fwd+bwd <= 0.70x torch (weighted; Winograd)",
          {"weighted": networks.get("resnet18-convs")}, lambda v: v <= 0.70)
    check("ResNet-50 convs fwd+bwd <= 0.75x torch (weighted; Winograd)",
          {"weighted": networks.get("resnet50-convs")}, lambda v: v <= 0.75)
    check("ResNet-18 convs at N=2 fwd+bwd <= 1.0x torch (weighted)",
          {"weighted": networks.get("resnet18-convs-n2")}, lambda v: v <= 1.0)
    check("ResNet 3x3 (N32 C64 56x56) fwd+bwd <= 0.45x torch",
          {"fwd_bwd": ratio("resnet-3x3", "conv_fwd_bwd")}, lambda v: v <= 0.45)
    check("SimpleCNN conv2 fwd+bwd <= 0.8x torch",
          {"fwd_bwd": ratio("simplecnn-conv2", "conv_fwd_bwd")}, lambda v: v <= 0.8)
    roof = get.get(("resnet-3x3", "conv_fwd", "auto"))
    if roof is not None and roof["roof_pct"] is not None:
        check("ResNet 3x3 (56x56 C64) forward >= 60% of the SGEMM roof",
              {"roof": roof["roof_pct"]}, lambda v: v >= 60)
    misses, total = [], 0
    for (shape, op, impl), r in get.items():
        d, i = get.get((shape, op, "direct")), get.get((shape, op, "im2col"))
        if impl != "auto" or d is None or i is None:
            continue
        total += 1
        wg = get.get((shape, op, "winograd"))
        best = min(d["median_ms"], i["median_ms"], wg["median_ms"] if wg else math.inf)
        if r["median_ms"] > 1.1 * best:
            misses.append((r["median_ms"] / best, f"{shape} {op}"))
    if total:
        misses.sort(reverse=True)
        worst = ", ".join(f"{name} {_ratio(f)}x" for f, name in misses[:4])
        more = f" and {len(misses) - 4} more" if len(misses) > 4 else ""
        checks.append(("auto within 10% of the fastest of direct / im2col / winograd",
                       f"{total - len(misses)}/{total} rows" +
                       (f"; worst: {worst}{more}" if misses else ""),
                       "no" if misses else "yes"))
    return checks


def targets_table(rows: Sequence[dict], markdown: bool = False) -> str:
    """``target_checks`` as a table (empty string when no target's rows were measured)."""
    checks = target_checks(rows)
    if not checks:
        return ""
    if markdown:
        return "\n".join(["| target | measured | met |", "|---|---|---|",
                          *[f"| {t} | {m} | {ok} |" for t, m, ok in checks]])
    width = max(len(t) for t, _, _ in checks)
    return "\n".join(f"{t:<{width}}  {ok:<3}  {m}" for t, m, ok in checks)


def _copy_roof_text(roofs: dict) -> str:
    at = roofs.get("copy_gbps_at") or {}
    if not at:
        return "the 64 MiB copy (memory bandwidth; cache-resident activations can exceed it)"
    return "a torch copy of their input size (" + \
        ", ".join(f"{k}: {v:.1f} GB/s" for k, v in at.items()) + ")"


def markdown_report(result: dict) -> str:
    """The committed report: command, machine, roofs, summary and detailed tables."""
    m, roofs = result["machine"], result["roofs"]
    shapes = {}
    for r in result["rows"]:
        shapes.setdefault(r["shape"], r["shape_desc"])
    lines = [
        f"# convkit bench: {result['device_label']}",
        "",
        "Made by:",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"- date: {m['date']}; convkit {m['convkit']} (git {m['convkit_git']})",
        f"- CPU: {m['cpu_model']}, {m['cpu_cores']} cores; torch threads {m['torch_threads']}, "
        f"numba threads {m['numba_threads']} ({m['numba_threading_layer']})",
        f"- GPU: {m['gpu_name']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}, "
        f"cudnn.benchmark={m['cudnn_benchmark']})" if m["gpu_name"] else "- GPU: none used",
        f"- torch {m['torch']}, numba {m['numba']}, numpy {m['numpy']} "
        f"(BLAS {m.get('numpy_blas')}), Python {m['python']}",
        f"- run time: {_minutes(result.get('elapsed_s'))}; "
        f"load average before the run: {result['load_avg_start']:.2f} (above ~0.5 other "
        "processes shared the cores and times are noisier)",
        f"- roofs measured in this run: SGEMM {roofs['sgemm_gflops']:.1f} GFLOP/s "
        f"(torch.matmul {roofs['sgemm_n']}x{roofs['sgemm_n']} fp32), "
        f"copy {roofs['copy_gbps']:.1f} GB/s",
        "",
        "Times are medians of repeated calls after warm-up; `(r x)` is the time ratio to the "
        "`torch` column (below 1 = convkit faster). "
        + ("`torch` runs cuDNN with TF32 off; `torch-tf32` with TF32 on. "
           if result["device"] == "cuda" else "`torch` is PyTorch's CPU path (oneDNN). ")
        + "conv GFLOP/s use the exact FLOP count (backward-input and backward-weight each equal "
          "the forward; fwd+bwd is 3x) and % of the SGEMM roof; ReLU/pool report GB/s of bytes "
          "moved and % of " + _copy_roof_text(roofs) + ".",
        "",
        "## Summary",
        "",
        summary_table(result["rows"], markdown=True),
        "",
        *_networks_section(result["rows"]),
        "## Speed targets (issue 7), this run",
        "",
        targets_table(result["rows"], markdown=True) or "No target's rows were measured.",
        "",
        "## Shapes",
        "",
        *[f"- `{name}`: {desc}" for name, desc in shapes.items()],
        "",
        "## Every row",
        "",
        "First-call time includes Numba's JIT compile (or cache load) the first time a kernel is "
        "used in the process, and torch's own first-call setup. "
        f"JIT cache: {result.get('jit_cache')}.",
        "",
        detail_table(result["rows"]),
        "",
    ]
    return "\n".join(lines)


def _networks_section(rows: Sequence[dict]) -> List[str]:
    tables = network_tables(rows, markdown=True)
    if not tables:
        return []
    return ["## Networks: every conv weighted by how often it occurs", "",
            "Ratios as above; the weighted total divides the sums over the network's convs of "
            "count x median ms, convkit's by torch's.", "", tables, ""]


def plot_ratios(rows: Sequence[dict], path: str, title: str = "") -> None:
    """Horizontal bar chart: convkit/torch time ratio per (shape, op) and implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    impls = [c for c in _impl_columns(rows) if c != "torch"]
    keys = []
    ratio = {}
    for r in rows:
        key = f"{r['shape']} {r['op']}"
        if key not in keys:
            keys.append(key)
        if r["ratio"] is not None:
            ratio[(key, r["impl"])] = r["ratio"]
    colors = {impl: f"C{j}" for j, impl in enumerate(impls)}
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(keys) + 1.5))
    labelled = set()
    for i, key in enumerate(keys):
        present = [impl for impl in impls if (key, impl) in ratio]
        height = 0.8 / max(len(present), 2)
        for j, impl in enumerate(present):
            y = i + (j - (len(present) - 1) / 2) * height
            v = ratio[(key, impl)]
            ax.barh(y, v, height=height, color=colors[impl],
                    label=None if impl in labelled else impl)
            labelled.add(impl)
            ax.text(v, y, f" {_ratio(v)}", va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_ylim(len(keys) - 0.5, -0.5)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(keys, fontsize=8)
    ax.set_xlabel("time / torch time (log; < 1 = faster than torch)")
    ax.set_title(title or "convkit vs torch")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# the README shows the SimpleCNN rows; the report linked from it has every shape
README_SHAPES = ("simplecnn",)


def _minutes(seconds: Optional[float]) -> str:
    return "several minutes" if not seconds else f"{seconds / 60:.0f} minutes"


def update_readme(path: str, result: dict, report_path: Optional[str]) -> None:
    """Replace the README section between the bench markers (append it if missing)."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    m = result["machine"]
    where = m["gpu_name"] or m["cpu_model"]
    body = "\n".join([
        start,
        "## Benchmarks",
        "",
        f"convkit vs PyTorch on {where} ({m['torch_threads']} threads, torch {m['torch']}, "
        f"numba {m['numba']}, {m['date'][:10]}); time in ms, ratio to torch in brackets "
        "(below 1 = convkit faster). SimpleCNN's layers and training step here; every shape "
        "(ResNet, VGG, strided, dilated, depthwise, 1x1) is in the full report."
        + (f" Full report: [{report_path}]({report_path})." if report_path else ""),
        "",
        summary_table([r for r in result["rows"] if r["shape"].startswith(README_SHAPES)],
                      markdown=True),
        "",
        "Speed targets (issue 7), same run:",
        "",
        targets_table(result["rows"], markdown=True) or "(no target's rows in this run)",
        "",
        "Reproduce (about a minute with `--quick`; the full table took "
        f"{_minutes(result.get('elapsed_s'))} here):",
        "",
        "```",
        "convkit bench --quick                                   # terminal table only",
        "convkit bench --report benchmarks/results --readme README.md   # full report + this table",
        "pytest benchmarks/ --benchmark-only                     # pytest-benchmark suites",
        "```",
        "",
        f"This table was made by `{result['command']}`.",
        end,
    ])
    text = open(path).read() if os.path.exists(path) else ""
    if start in text and end in text:
        text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body + "\n"
    with open(path, "w") as f:
        f.write(text)


def write_outputs(result: dict, json_path: Optional[str] = None, plot: Optional[str] = None,
                  markdown: Optional[str] = None, report: Optional[str] = None,
                  readme: Optional[str] = None) -> int:
    """Print the summary and the failed rows, write the files asked for: JSON, PNG, markdown,
    a report folder ``report/<device-label>/{full|quick}.{md,json,png,cmd}`` (files not named
    otherwise go there) and the README section. Returns 1 if any row failed or raised, else 0.
    """
    print()
    print(summary_table(result["rows"]))
    networks = network_tables(result["rows"])
    if networks:
        print("\n" + networks)
    targets = targets_table(result["rows"])
    if targets:
        print("\nspeed targets (auto vs torch):\n" + targets)
    failed = [r for r in result["rows"] if r["status"] in ("FAILED validation", "error")]
    for r in failed:
        why = r["note"] if r["status"] == "error" else \
            f"max rel error {r['max_rel_error']:.2e} > {r['tolerance']:.0e}"
        print(f"{r['status']}: {r['shape']} {r['op']} {r['impl']} ({why})")

    outputs = {"json": json_path, "plot": plot, "markdown": markdown}
    report_md = None
    if report:
        folder = os.path.join(report, result["device_label"])
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, "quick" if result["quick"] else "full")
        outputs = {"json": outputs["json"] or stem + ".json",
                   "plot": outputs["plot"] or stem + ".png",
                   "markdown": outputs["markdown"] or stem + ".md"}
        with open(stem + ".cmd", "w") as f:
            f.write(result["command"] + "\n")
        report_md = outputs["markdown"]
    if outputs["json"]:
        with open(outputs["json"], "w") as f:
            # the weighted network totals ride along, so a reader of the JSON need not recompute
            json.dump(_finite({**result, "networks": weighted.summaries(result["rows"])}), f,
                      indent=1, default=str)
            f.write("\n")
    if outputs["markdown"]:
        with open(outputs["markdown"], "w") as f:
            f.write(markdown_report(result))
    if outputs["plot"]:
        try:
            plot_ratios(result["rows"], outputs["plot"],
                        f"convkit / torch time, {result['device_label']}")
        except ImportError as e:
            print(f"no plot ({e}); pip install matplotlib for the PNG")
            outputs["plot"] = None
    if readme:
        rel = os.path.relpath(report_md, os.path.dirname(os.path.abspath(readme)) or ".") \
            if report_md else None
        update_readme(readme, result, rel)
    for kind, path in outputs.items():
        if path:
            print(f"wrote {kind}: {path}")
    return 1 if failed else 0


def _finite(v):
    """JSON has no inf/NaN: write them as null."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
