"""A whole network's convolutions as one number: the occurrence-weighted time of a workload.

A workload (``convkit.bench.shapes.WORKLOADS``) lists each distinct conv of a network once with
how often the network runs it. From one run's rows this module sums, for torch and for each
convkit implementation, ``count x (fwd + bwd-input + bwd-weight)`` median milliseconds over the
workload's convs; the ratio of the two sums is the network's convs against torch's, both
measured in the same run. It also ranks every (conv, pass) by the time it costs over torch,
``count x (convkit - torch)`` ms: where a faster kernel would save the most.

Everything reads the row dicts of a result (as ``report``), so it works on an earlier run's JSON.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from convkit.bench.shapes import WORKLOADS, Workload

# the three passes a training step runs for each conv; conv_fwd_bwd times the same three in one
PASS_OPS = ("conv_fwd", "conv_bwd_input", "conv_bwd_weight")
FWD_BWD = "conv_fwd_bwd"
PASS_LABELS = {"conv_fwd": "fwd", "conv_bwd_input": "bwd-input",
               "conv_bwd_weight": "bwd-weight", FWD_BWD: "fwd+bwd"}
_CHOICE_ABBREV = {"conv_fwd": "fwd", "conv_bwd_input": "in", "conv_bwd_weight": "w"}
_IMPL_ORDER = ("direct", "im2col", "auto", "convkit")


def network_summary(rows: Sequence[dict], workload: Workload, impl: str) -> Optional[dict]:
    """The weighted totals of ``workload`` for convkit ``impl`` against torch, or None when the
    run has no row of that workload and implementation.

    The sum runs over the separate passes measured (all three when present), else over the
    ``conv_fwd_bwd`` rows. ``complete`` says whether that is all three passes; ``missing`` lists
    the (shape, op) whose torch or ``impl`` row is absent or failed, and then ``ratio`` is None
    (a partial sum would compare different work). ``terms`` has one entry per (conv, pass).
    """
    names = [s.name for s in workload.shapes]
    ok = {(r["shape"], r["op"], r["impl"]): r for r in rows if r["status"] == "ok"}
    present = {(r["shape"], r["op"]) for r in rows if r["impl"] == impl and r["shape"] in names}
    ops = [op for op in PASS_OPS if any((n, op) in present for n in names)]
    if not ops and any((n, FWD_BWD) in present for n in names):
        ops = [FWD_BWD]
    if not ops:
        return None
    missing = [(n, op) for n in names for op in ops
               if (n, op, "torch") not in ok or (n, op, impl) not in ok]
    terms: List[dict] = []
    torch_ms = convkit_ms = 0.0
    for shape, count in workload.convs:
        for op in ops:
            t, c = ok.get((shape.name, op, "torch")), ok.get((shape.name, op, impl))
            if t is None or c is None:
                continue
            torch_ms += count * t["median_ms"]
            convkit_ms += count * c["median_ms"]
            terms.append({"shape": shape.name, "op": op, "count": count,
                          "torch_ms": t["median_ms"], "convkit_ms": c["median_ms"],
                          "ratio": c["median_ms"] / t["median_ms"],
                          "excess_ms": count * (c["median_ms"] - t["median_ms"]),
                          "auto_choice": c["auto_choice"]})
    return {"workload": workload.name, "impl": impl, "ops": ops,
            "complete": ops in (list(PASS_OPS), [FWD_BWD]), "missing": missing,
            "num_convs": workload.num_convs, "distinct": len(workload.convs),
            "torch_ms": torch_ms, "convkit_ms": convkit_ms,
            "ratio": None if missing or not torch_ms else convkit_ms / torch_ms,
            "terms": terms}


def largest_excess(summary: dict, top: int = 3) -> List[dict]:
    """The ``top`` (conv, pass) terms that cost the most time over torch, count x (convkit -
    torch) ms, largest first; only terms slower than torch."""
    slower = [t for t in summary["terms"] if t["excess_ms"] > 0]
    return sorted(slower, key=lambda t: t["excess_ms"], reverse=True)[:top]


def combined_choice(terms: Sequence[dict]) -> str:
    """What auto ran for one conv over its passes: "im2col" when every pass agrees, else e.g.
    "fwd:direct in:im2col w:im2col" (empty when no term records a choice)."""
    picks = [(t["op"], t["auto_choice"]) for t in terms if t["auto_choice"]]
    if len({a for _, a in picks}) <= 1:
        return picks[0][1] if picks else ""
    return " ".join(f"{_CHOICE_ABBREV.get(op, op)}:{a}" for op, a in picks)


def summaries(rows: Sequence[dict]) -> List[dict]:
    """``network_summary`` of every workload and convkit implementation the rows measured."""
    impls = [i for i in _IMPL_ORDER if any(r["impl"] == i for r in rows)]
    out = []
    for workload in WORKLOADS.values():
        for impl in impls:
            s = network_summary(rows, workload, impl)
            if s is not None:
                out.append(s)
    return out


def weighted_ratios(rows: Sequence[dict], impl: str = "auto") -> Dict[str, float]:
    """Workload name -> weighted fwd+bwd ratio of ``impl``, for every workload measured in
    full (all three passes, or conv_fwd_bwd, of every conv on both sides)."""
    return {s["workload"]: s["ratio"] for s in summaries(rows)
            if s["impl"] == impl and s["complete"] and s["ratio"] is not None}
