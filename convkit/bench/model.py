"""``convkit bench --model module:callable``: a user's whole model, torch against convkit.

The model is built twice from one instance (``copy.deepcopy``: the same weights and buffers),
one copy converted (``convkit.convert``, with ``functional=True`` unless ``--no-functional``:
``F.relu`` and friends in ``forward`` count too). Then, llm.c's order:

1. check (:func:`check`): the eval-mode forward in float32, and the eval forward and the
   train-mode gradients of every parameter of float64 copies, against torch's (one relative
   error each: max |difference| over max |torch's value|, the gradients judged on the scale
   of the whole gradient, since BatchNorm makes some of them ~0); a model that fails is not
   timed;
2. time, in the same process and in alternating rounds (:func:`harness.measure_interleaved`):
   ``forward`` (eval mode under ``torch.no_grad``, as inference runs) and ``fwd+bwd`` (train
   mode, backward of the sum of the outputs), torch and convkit;
3. per layer: forward and backward hooks on each converted module and on the torch module it
   replaced (backward: hooks on the autograd node the layer's output carries) time every
   layer over a few more train-mode rounds; convkit's share is the part of the convkit
   model's time spent in convkit's layers, the excess of a layer its convkit time minus
   torch's, summed over its calls in one step.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from convkit.bench.harness import (
    QUICK_SETTINGS,
    TOLERANCE,
    Case,
    Settings,
    Timer,
    finish_row,
    measure_interleaved,
    prepare,
)
from convkit.bench.report import _finite, _grid, _ms, _ratio

DEFAULT_INPUT = (3, 224, 224)
OPS = ("forward", "fwd+bwd")
# the layers shown, most time over torch first (the JSON holds them all)
TOP_LAYERS = 15


@dataclass
class ModelShape:
    """What a row of the model report measured (the ``shape`` of a shape-table row)."""

    name: str
    input_shape: Tuple[int, ...]
    dtype: torch.dtype

    def describe(self) -> str:
        n, *rest = self.input_shape
        return f"N{n} {'x'.join(map(str, rest))} {str(self.dtype).replace('torch.', '')}"


def build(spec: str) -> nn.Module:
    """The model ``spec`` names: ``module:callable`` (a dotted attribute path after the colon;
    the module may be a ``.py`` file's path), called with no arguments unless it is already an
    ``nn.Module``. ``torchvision:NAME`` is short for ``torchvision.models:NAME`` (random
    weights: the builders' default)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"convkit bench: --model takes module:callable (for example "
                         f"torchvision:resnet18 or my_models.py:build), got {spec!r}")
    if module_name == "torchvision":
        module_name = "torchvision.models"
    if module_name.endswith(".py"):
        path = os.path.abspath(module_name)
        name = os.path.splitext(os.path.basename(path))[0]
        loader = importlib.util.spec_from_file_location(name, path)
        if loader is None or not os.path.exists(path):
            raise SystemExit(f"convkit bench: --model: no file {module_name!r}")
        module = importlib.util.module_from_spec(loader)
        sys.modules.setdefault(name, module)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    model = obj if isinstance(obj, nn.Module) or not callable(obj) else obj()
    if not isinstance(model, nn.Module):
        raise SystemExit(f"convkit bench: --model {spec} built a {type(model).__name__}, "
                         f"not a torch.nn.Module")
    return model


def parse_shape(text: str) -> Tuple[int, ...]:
    """'3,224,224' (or 3x224x224) -> (3, 224, 224)."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise SystemExit(f"convkit bench: --input-shape takes positive sizes like 3,224,224, "
                         f"got {text!r}")
    return shape


def _loss(out) -> torch.Tensor:
    return sum(t.float().sum() for t in tree_leaves(out) if isinstance(t, torch.Tensor))


def _rel_error(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """max |got - expected| over max |expected|, across all the tensors at once."""
    if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected)):
        return float("inf")
    if not expected:
        return 0.0
    err = max((a.double() - b.double()).abs().max().item() for a, b in zip(got, expected))
    scale = max(b.double().abs().max().item() for b in expected)
    return err / scale if scale > 0 else err


def _train_step(model: nn.Module, x: torch.Tensor, seed: int = 0) -> List[torch.Tensor]:
    """Train-mode forward and backward; returns the parameters' gradients (None as zeros)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks on both sides
    _loss(model(x)).backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for p in model.parameters()]


def _eval_outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return [t for t in tree_leaves(model(x)) if isinstance(t, torch.Tensor)]


def check(ref: nn.Module, model: nn.Module, x: torch.Tensor) -> Dict[str, object]:
    """``model`` (converted) against ``ref`` (torch): the float32 eval forward, and the eval
    forward and train-mode gradients of float64 copies, where rounding cannot hide a wrong
    layer. Float32 train-mode gradients are only reported, both sides' against torch's
    float64 ones: BatchNorm over a small batch amplifies rounding (torchvision's mobilenet_v2
    at N=2, 128^2: torch's own float32 gradients off by up to 2e-2 of the largest)."""
    tol32, tol64 = TOLERANCE[torch.float32], TOLERANCE[torch.float64]
    result = {"forward_rel_error": _rel_error(_eval_outputs(model, x), _eval_outputs(ref, x)),
              "tolerance": tol32, "tolerance_float64": tol64}
    ref64, model64, x64 = copy.deepcopy(ref).double(), copy.deepcopy(model).double(), x.double()
    result["float64_forward_rel_error"] = _rel_error(_eval_outputs(model64, x64),
                                                     _eval_outputs(ref64, x64))
    grads64 = _train_step(ref64, x64)
    result["float64_gradient_rel_error"] = _rel_error(_train_step(model64, x64), grads64)
    result["gradient_rel_error"] = _rel_error(_train_step(model, x), grads64)
    result["torch_gradient_rel_error"] = _rel_error(_train_step(ref, x), grads64)
    result["ok"] = (result["forward_rel_error"] <= tol32
                    and result["float64_forward_rel_error"] <= tol64
                    and result["float64_gradient_rel_error"] <= tol64)
    return result


def _cases(shape: ModelShape, models: Dict[str, nn.Module], x: torch.Tensor) -> List[Case]:
    cases = []
    for op in OPS:
        for impl, model in models.items():
            # the mode is set in each call: the cases of one model alternate
            if op == "forward":
                def run(model=model):
                    model.eval()
                    with torch.no_grad():
                        return model(x)
            else:
                def run(model=model):
                    model.train()
                    model.zero_grad(set_to_none=True)
                    out = _loss(model(x))
                    out.backward()
                    return out
            cases.append(Case(shape, op, impl, run, "model"))
    return cases


def pairs(ref: nn.Module, model: nn.Module) -> List[Tuple[str, nn.Module, nn.Module]]:
    """(name, torch module, convkit module) for every module convert swapped."""
    from convkit.nn import Conv2d, MaxPool2d, ReLU

    torch_modules = dict(ref.named_modules())
    return [(name, torch_modules[name], m) for name, m in model.named_modules()
            if isinstance(m, (Conv2d, ReLU, MaxPool2d)) and name in torch_modules]


class LayerClock:
    """Forward and backward wall time of chosen modules, summed over their calls in a step:
    forward from a pre-hook to a hook on the module, backward from a pre-hook to a hook on the
    autograd node of its output."""

    def __init__(self, modules: Dict[str, nn.Module], sync):
        self.sync = sync
        self.fwd: Dict[str, float] = {}
        self.bwd: Dict[str, float] = {}
        self.calls: Dict[str, int] = {}
        self.inputs: Dict[str, str] = {}
        self._t0: Dict[str, float] = {}
        self.handles = []
        for name, m in modules.items():
            self.handles.append(m.register_forward_pre_hook(self._start(name)))
            self.handles.append(m.register_forward_hook(self._stop(name)))

    def reset(self):
        self.fwd, self.bwd, self.calls = {}, {}, {}

    def _now(self) -> float:
        self.sync()
        return time.perf_counter()

    def _start(self, name):
        def hook(module, args):
            if name not in self.inputs and args and isinstance(args[0], torch.Tensor):
                self.inputs[name] = "x".join(map(str, args[0].shape))
            self._t0[name] = self._now()
        return hook

    def _stop(self, name):
        def hook(module, args, out):
            self.fwd[name] = self.fwd.get(name, 0.0) + self._now() - self._t0[name]
            self.calls[name] = self.calls.get(name, 0) + 1
            y = out[0] if isinstance(out, tuple) else out
            node = getattr(y, "grad_fn", None)
            if node is not None:
                node.register_prehook(self._bwd_start(name))
                node.register_hook(self._bwd_stop(name))
        return hook

    def _bwd_start(self, name):
        def hook(grad_outputs):
            self._t0[name] = self._now()
        return hook

    def _bwd_stop(self, name):
        def hook(grad_inputs, grad_outputs):
            self.bwd[name] = self.bwd.get(name, 0.0) + self._now() - self._t0[name]
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def layer_times(ref: nn.Module, model: nn.Module, x: torch.Tensor, rounds: int,
                timer: Timer) -> Tuple[List[dict], Dict[str, Dict[str, float]]]:
    """Per converted layer: median forward and backward ms per step, torch's and convkit's,
    over ``rounds`` alternating train-mode steps (after one warm step each); and per side
    the median ms of the whole hooked step and of its forward, of the layers' time in them,
    and the median of the layers' share of each step."""
    layers = pairs(ref, model)
    clocks = {"torch": LayerClock({n: t for n, t, _ in layers}, timer.sync),
              "convkit": LayerClock({n: c for n, _, c in layers}, timer.sync)}
    models = {"torch": ref, "convkit": model}
    samples = {side: {"layers": [], "step": [], "forward": []} for side in models}
    try:
        for rnd in range(rounds + 1):
            for side in (("torch", "convkit") if rnd % 2 == 0 else ("convkit", "torch")):
                m, clock = models[side], clocks[side]
                m.train()
                m.zero_grad(set_to_none=True)
                clock.reset()
                timer.sync()
                t0 = time.perf_counter()
                out = _loss(m(x))
                timer.sync()
                t1 = time.perf_counter()
                out.backward()
                timer.sync()
                t2 = time.perf_counter()
                if rnd:  # the first round warms the hooks' paths up
                    samples[side]["layers"].append((dict(clock.fwd), dict(clock.bwd)))
                    samples[side]["step"].append(t2 - t0)
                    samples[side]["forward"].append(t1 - t0)
    finally:
        for clock in clocks.values():
            clock.remove()
    rows = []
    for name, _, c_mod in layers:
        row = {"layer": name, "type": type(c_mod).__name__,
               "input": clocks["convkit"].inputs.get(name, ""),
               "calls": clocks["convkit"].calls.get(name, 0)}
        for side in models:
            for k, key in ((0, "fwd"), (1, "bwd")):
                row[f"{side}_{key}_ms"] = 1e3 * statistics.median(
                    s[k].get(name, 0.0) for s in samples[side]["layers"])
        row["excess_ms"] = (row["convkit_fwd_ms"] + row["convkit_bwd_ms"]
                            - row["torch_fwd_ms"] - row["torch_bwd_ms"])
        rows.append(row)
    totals = {}
    for side, sample in samples.items():
        fwd = [sum(f.values()) for f, _ in sample["layers"]]
        both = [sum(f.values()) + sum(b.values()) for f, b in sample["layers"]]
        totals[side] = {
            "forward_ms": 1e3 * statistics.median(sample["forward"]),
            "step_ms": 1e3 * statistics.median(sample["step"]),
            "layers_forward_ms": 1e3 * statistics.median(fwd),
            "layers_step_ms": 1e3 * statistics.median(both),
            # the share of each step, then the median: a ratio within one step
            "layers_forward_share": statistics.median(
                a / b for a, b in zip(fwd, sample["forward"])),
            "layers_step_share": statistics.median(
                a / b for a, b in zip(both, sample["step"]))}
    return rows, totals


def run_model(args, command: str) -> int:
    """``convkit bench --model``: build, convert, check, time, report; the exit code (1 when the
    check failed)."""
    import numba

    import convkit
    from convkit.bench.machine import device_label, environment

    for option in ("shapes", "ops", "report", "readme", "plot", "from_json"):
        if getattr(args, option, None):
            raise SystemExit(f"convkit bench: --{option.replace('_', '-')} is for the shape "
                             f"table, not --model (which writes --json and --markdown)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("convkit bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    settings = copy.copy(QUICK_SETTINGS if args.quick else Settings())
    if args.min_time is not None:
        settings.min_time = args.min_time
    if args.reps is not None:
        settings.min_reps = args.reps
    input_shape = (args.batch, *parse_shape(args.input_shape or
                                            ",".join(map(str, DEFAULT_INPUT))))
    t_start = time.perf_counter()
    torch.manual_seed(0)
    ref = build(args.model).to(device)
    model = convkit.convert(copy.deepcopy(ref), functional=args.functional)
    report = convkit.conversion_report(model)
    x = torch.randn(input_shape, device=device)
    shape = ModelShape(args.model.partition(":")[2], input_shape, x.dtype)
    result = {"kind": "model", "model": args.model, "input_shape": list(input_shape),
              "functional": args.functional, "command": command,
              "conversion": str(report), "rows": [], "layers": [], "totals": {}}
    result["check"] = check(ref, model, x)
    timer = Timer(device)
    if result["check"]["ok"]:
        cases = _cases(shape, {"torch": ref, "convkit": model}, x)
        rows, needs = [], []
        for case in cases:
            row, _, need = prepare(case, timer, settings)
            rows.append(row)
            needs.append(need)
        measure_interleaved(cases, rows, needs, timer, settings)
        for row in rows:
            torch_row = next(r for r in rows if r["op"] == row["op"] and r["impl"] == "torch")
            finish_row(row, torch_row, None, {})
        result["rows"] = rows
        result["layers"], result["totals"] = layer_times(ref, model, x,
                                                         max(3, settings.min_reps), timer)
    result["elapsed_s"] = time.perf_counter() - t_start
    result["device_label"] = device_label(device)
    result["machine"] = environment(device)
    text = model_report(result)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(model_report(result, markdown=True) + "\n")
        print(f"wrote markdown: {args.markdown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_finite(result), f, indent=1, default=str)
            f.write("\n")
        print(f"wrote json: {args.json}")
    return 0 if result["check"]["ok"] else 1


def model_report(result: dict, markdown: bool = False) -> str:
    """The model report: the check, the time table (as the shape table: median ms with the
    quartiles, convkit's ratio to torch), convkit's share and the layers with the most time
    over torch."""
    c = result["check"]
    m = result["machine"]
    out = [f"{'## ' if markdown else ''}convkit bench --model {result['model']}: input "
           f"{'x'.join(map(str, result['input_shape']))}, {m['device']} ({m['cpu_model']}"
           f"{', ' + m['gpu_name'] if m.get('gpu_name') else ''}), torch {m['torch']}, "
           f"{m['torch_threads']} torch / {m['numba_threads']} numba threads", ""]
    conversion = result["conversion"]
    out += ["```", conversion, "```"] if markdown else [conversion]
    verdict = "ok" if c["ok"] else "FAILED: not timed"
    out += ["", f"check against torch (max rel error): float32 forward "
                f"{c['forward_rel_error']:.1e} (tolerance {c['tolerance']:.0e}); float64 forward "
                f"{c['float64_forward_rel_error']:.1e}, gradients "
                f"{c['float64_gradient_rel_error']:.1e} (tolerance "
                f"{c['tolerance_float64']:.0e}): {verdict}",
            f"float32 gradients against torch's float64 ones: convkit "
            f"{c['gradient_rel_error']:.1e}, torch {c['torch_gradient_rel_error']:.1e}"]
    if not result["rows"]:
        return "\n".join(out)
    lines = []
    for op in OPS:
        by_impl = {r["impl"]: r for r in result["rows"] if r["op"] == op}
        cells = []
        for impl in ("torch", "convkit"):
            r = by_impl[impl]
            cell = (f"{_ms(r['median_ms'])} ({_ms(r['q1_ms'])}-{_ms(r['q3_ms'])})"
                    if r["status"] == "ok" else r["status"])
            cells.append(cell)
        ratio = by_impl["convkit"].get("ratio")
        lines.append([r["shape"], r["op"], *cells, "-" if ratio is None else f"{_ratio(ratio)}x"])
    out += ["", "Whole model, median ms (quartiles), same run, alternating rounds "
                "(forward: eval mode, no_grad; fwd+bwd: train mode):", "",
            _grid(["model", "op", "torch ms", "convkit ms", "convkit / torch"], lines,
                  markdown)]
    layers, totals = result["layers"], result["totals"]
    if layers:
        lines = []
        for label, key in (("forward", "forward"), ("fwd+bwd", "step")):
            cells = []
            for side in ("torch", "convkit"):
                t = totals[side]
                cells.append(f"{_ms(t[f'layers_{key}_ms'])} of {_ms(t[f'{key}_ms'])} ms "
                             f"({100 * t[f'layers_{key}_share']:.0f}%)")
            lines.append([label, *cells])
        out += ["", f"Time in the {len(layers)} converted layers (hooked train-mode steps: "
                    f"convkit's share of the convkit model's time, and the same layers' share "
                    f"of torch's):", "",
                _grid(["step", "torch layers", "convkit layers"], lines, markdown)]
        ranked = sorted(layers, key=lambda r: -r["excess_ms"])[:TOP_LAYERS]
        lines = [[r["layer"], r["type"], r["input"], str(r["calls"]),
                  f"{_ms(r['torch_fwd_ms'])} / {_ms(r['convkit_fwd_ms'])}",
                  f"{_ms(r['torch_bwd_ms'])} / {_ms(r['convkit_bwd_ms'])}",
                  f"{r['excess_ms']:+.3g}"] for r in ranked]
        total = sum(r["excess_ms"] for r in layers)
        out += ["", f"Per layer, most time over torch first (ms per step, medians; "
                    f"{len(ranked)} of {len(layers)}; all layers together {total:+.3g} ms):",
                "", _grid(["layer", "type", "input", "calls", "fwd torch / convkit",
                           "bwd torch / convkit", "excess ms"], lines, markdown)]
    return "\n".join(out)


__all__ = ["ModelShape", "LayerClock", "build", "check", "layer_times", "model_report",
           "pairs", "parse_shape", "run_model"]
