"""One benchmark run: measure the roofs, then every (shape, op) group (torch first, so each
convkit row is checked against torch's output), printing a progress line per row."""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch

from convkit.bench.cases import build_cases
from convkit.bench.harness import (
    QUICK_SETTINGS,
    Settings,
    Timer,
    finish_row,
    measure,
    measure_interleaved,
    new_row,
    prepare,
)
from convkit.bench.machine import measure_copy, measure_roofs
from convkit.bench.report import progress_line
from convkit.bench.shapes import ALGORITHMS, PlaneShape, ops_for


def run_bench(shapes: Sequence, ops: Sequence[str], device: torch.device,
              algorithms: Sequence[str] = ALGORITHMS, settings: Optional[Settings] = None,
              quick: bool = False, out=None) -> dict:
    """Measure every (shape, op) and return the result dict written as JSON."""
    settings = settings or (QUICK_SETTINGS if quick else Settings())
    stream = out or sys.stdout
    timer = Timer(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"warning: load average {load:.2f} before starting: other processes are using "
              "the CPU, so times will be noisy (ratios from one run stay comparable)",
              file=stream, flush=True)
    print(f"convkit bench on {device}: measuring roofs ...", file=stream, flush=True)
    roofs = measure_roofs(device, timer, quick)
    print(f"  SGEMM {roofs['sgemm_gflops']:.1f} GFLOP/s, copy {roofs['copy_gbps']:.1f} GB/s",
          file=stream, flush=True)
    plan = [(s, op) for s in shapes for op in ops_for(s) if op in ops]
    tf32 = device.type == "cuda"
    total = sum(1 + (min(len(algorithms), 1) if isinstance(s, PlaneShape)
                     else tf32 + len(algorithms))
                for s, _ in plan)
    rows: List[dict] = []
    i = 0
    for shape, op in plan:
        if isinstance(shape, PlaneShape) and shape.name not in roofs["copy_gbps_at"]:
            roofs["copy_gbps_at"][shape.name] = measure_copy(
                math.prod(shape.input_shape), device, timer)
        cases = build_cases(shape, op, device, algorithms)
        group: List[dict] = []
        needs: List[int] = []
        reference = None
        for case in cases:
            try:
                if settings.interleave:
                    row, first, need = prepare(case, timer, settings,
                                               None if case.is_torch else reference)
                else:
                    (row, first), need = measure(case, timer, settings,
                                                 None if case.is_torch else reference), 0
            except Exception as e:  # one broken kernel must not hide the other rows
                row, first, need = new_row(case), None, 0
                row["status"] = "error"
                row["note"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            if case.impl == "torch":
                reference = first   # every convkit row is checked against torch's output
            group.append(row)
            needs.append(need)
            if not settings.interleave:
                i += 1
                _finish_group([row], group, roofs)
                print(progress_line(i, total, row), file=stream, flush=True)
        if settings.interleave:
            try:
                measure_interleaved(cases, group, needs, timer, settings)
            except Exception as e:
                for row in group:
                    if row["status"] == "ready":
                        row["status"], row["note"] = "error", f"{type(e).__name__}: {e}"[:200]
            _finish_group(group, group, roofs)
            for row in group:
                i += 1
                print(progress_line(i, total, row), file=stream, flush=True)
        rows += group
        del cases, reference
    return {"schema": 1, "device": device.type, "quick": quick, "rows": rows, "roofs": roofs,
            "load_avg_start": load,
            "settings": vars(settings), "algorithms": list(algorithms), "ops": list(ops)}


def _finish_group(todo: Sequence[dict], group: Sequence[dict], roofs: Dict[str, float]) -> None:
    torch_row = next((r for r in group if r["impl"] == "torch"), None)
    tf32_row = next((r for r in group if r["impl"] == "torch-tf32"), None)
    for row in todo:
        finish_row(row, torch_row, tf32_row, roofs)
