"""The cases of one (shape, op): torch's call first, then one per convkit implementation.

Every case builds its tensors from a seeded generator, so torch and convkit see the same
numbers and the harness can check convkit's output against torch's before timing it. Only
convkit's public API is called (``convkit.functional``, ``convkit.models``): what is timed is what
a user gets, dispatch and the choice ``algorithm="auto"`` makes included.

- conv_fwd: ``convkit.functional.conv2d`` / ``torch.nn.functional.conv2d``
- conv_bwd_input, conv_bwd_weight: ``torch.autograd.grad`` of that conv w.r.t. x, or w, alone
- conv_fwd_bwd: the conv and ``autograd.grad`` of x, w and b
- relu_fwd / relu_bwd: ``functional.relu`` / ``torch.relu``, then its ``autograd.grad``
- pool_fwd / pool_bwd: ``functional.max_pool2d`` / ``F.max_pool2d`` (2x2), then its gradient
- train_step: ``convkit.models.SimpleCNN("convkit", algorithm=...)`` / ``SimpleCNN("torch")``

The backward-only ops back-propagate through a graph whose forward ran once, untimed, in the
case's setup, and ask for one gradient only, so the call timed is that single backward pass
(torch then runs ``convolution_backward`` with a one-gradient output mask).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

import convkit.functional as CF
from convkit.bench.harness import Case
from convkit.bench.shapes import ALGORITHMS, ConvShape, PlaneShape, TrainShape, simple_cnn_convs
from convkit.engine.algorithm import winograd_qualifies
from convkit.models import SimpleCNN

# the conv passes each op runs, for asking what auto chose in each
PASSES = {"conv_fwd": ("forward",), "conv_bwd_input": ("backward_input",),
          "conv_bwd_weight": ("backward_weight",),
          "conv_fwd_bwd": ("forward", "backward_input", "backward_weight")}
_PASS_ABBREV = {"forward": "fwd", "backward_input": "in", "backward_weight": "w"}


def auto_choice(shape: ConvShape, device: torch.device,
                passes: Sequence[str] = ("forward",)) -> str:
    """What ``algorithm="auto"`` ran for this shape, per pass: "im2col" when every pass agrees,
    else e.g. "fwd:direct in:im2col w:im2col". Asks ``convkit.functional.select_algorithm``
    (on the CPU auto is a measured one-time choice, so ask after the shape has run)."""
    picks = [str(CF.select_algorithm(shape.input_shape, shape.weight_shape, shape.stride,
                                     shape.padding, shape.dilation, shape.groups,
                                     dtype=torch.float32, device_type=device.type, pass_name=p))
             for p in passes]
    if len(set(picks)) == 1:
        return picks[0]
    return " ".join(f"{_PASS_ABBREV[p]}:{a}" for p, a in zip(passes, picks))


def _randn(shape, device, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device)


def _backward(shape, op: str, impl: str, forward: Callable[[], torch.Tensor],
              wrt: torch.Tensor, gy: torch.Tensor, **fields) -> Case:
    """A case timing ``torch.autograd.grad(forward(), wrt, gy)`` alone: setup runs the forward
    once (untimed) and every call back-propagates through that graph again."""
    graph = {}

    def setup():
        graph["y"] = forward()

    def run():
        return torch.autograd.grad(graph["y"], wrt, gy, retain_graph=True)[0]

    return Case(shape, op, impl, run, "autograd", setup=setup, **fields)


def _fwd_bwd(conv, x, w, b, gy):
    """One forward and the gradients of x, w and b: what a layer costs in a training step."""
    xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
    y = conv(xr, wr, br)
    return torch.autograd.grad(y, (xr, wr, br), gy)


def conv_cases(shape: ConvShape, op: str, device: torch.device, algorithms: Sequence[str],
               tf32_column: bool) -> List[Case]:
    """torch first (then torch-tf32 on CUDA), then one case per convkit algorithm."""
    gen = torch.Generator().manual_seed(0)
    fan_in = shape.weight_shape[1] * shape.KH * shape.KW
    x = _randn(shape.input_shape, device, gen)
    w = _randn(shape.weight_shape, device, gen, 1.0 / math.sqrt(fan_in))
    b = _randn((shape.K,), device, gen, 0.1)
    gy = _randn(shape.output_shape, device, gen)
    args = (shape.stride, shape.padding, shape.dilation, shape.groups)
    flops = shape.flops * (3 if op == "conv_fwd_bwd" else 1)
    # the one tensor a backward-only op differentiates: the others need no gradient
    xr = x.detach().requires_grad_() if op == "conv_bwd_input" else x
    wr = w.detach().requires_grad_() if op == "conv_bwd_weight" else w

    def case(impl: str, conv: Callable, **fields) -> Case:
        """The op's case for one implementation of conv(x, w, b, *args)."""
        if op == "conv_fwd":
            return Case(shape, op, impl, lambda: conv(x, w, b, *args), "functional", flops,
                        **fields)
        if op == "conv_fwd_bwd":
            return Case(shape, op, impl, lambda: _fwd_bwd(lambda *t: conv(*t, *args), x, w, b, gy),
                        "functional", flops, **fields)
        return _backward(shape, op, impl, lambda: conv(xr, wr, b, *args),
                         xr if op == "conv_bwd_input" else wr, gy, flops=flops, **fields)

    cases = [case("torch", F.conv2d)]
    if tf32_column:
        cases.append(case("torch-tf32", F.conv2d, tf32=True))
    for algo in algorithms:
        if algo == "winograd" and not (device.type == "cpu" and winograd_qualifies(
                shape.weight_shape, shape.stride, shape.dilation)):
            continue  # 3x3 stride-1 undilated convs on the CPU only
        choice = (lambda: auto_choice(shape, device, PASSES[op])) if algo == "auto" else None

        def conv(*t, a=algo):
            return CF.conv2d(*t, algorithm=a)
        cases.append(case(algo, conv, choice=choice))
    return cases


def plane_cases(shape: PlaneShape, op: str, device: torch.device,
                with_convkit: bool) -> List[Case]:
    """ReLU / max-pool cases: torch, then convkit (no algorithm choice for these ops; no TF32
    column either, as there is no matmul inside)."""
    gen = torch.Generator().manual_seed(0)
    x = _randn(shape.input_shape, device, gen)
    k = shape.pool
    numel = x.numel()
    if op.startswith("relu"):
        fns = {"torch": torch.relu, "convkit": CF.relu}
        gy = _randn(shape.input_shape, device, gen)
        nbytes = 4 * numel * (2 if op == "relu_fwd" else 3)     # read x | gy, y; write y | gx
    else:
        fns = {"torch": lambda t: F.max_pool2d(t, k, k),
               "convkit": lambda t: CF.max_pool2d(t, k, k)}
        gy = _randn((shape.N, shape.C, shape.H // k, shape.W // k), device, gen)
        out = gy.numel()
        # fwd: read x, write y (+ int64 indices, which convkit always produces); bwd: read gy and
        # indices, write gx
        nbytes = 4 * numel + 4 * out if op == "pool_fwd" else 4 * out + 8 * out + 4 * numel
    xr = x.detach().requires_grad_()
    cases = []
    for impl in ("torch", "convkit") if with_convkit else ("torch",):
        if op.endswith("fwd"):
            cases.append(Case(shape, op, impl, lambda f=fns[impl]: f(x), "functional",
                              bytes=nbytes))
        else:
            cases.append(_backward(shape, op, impl, lambda f=fns[impl]: f(xr), xr, gy,
                                   bytes=nbytes))
    return cases


def train_cases(shape: TrainShape, device: torch.device, algorithms: Sequence[str],
                tf32_column: bool) -> List[Case]:
    """One full step each: zero_grad, forward, cross-entropy, backward, Adam step.

    Every model is ``convkit.models.SimpleCNN`` from the same seed (so the same weights on
    either backend) and reseeds torch's RNG before each step, so the first step's loss and
    gradients (dropout included) can be compared exactly.
    """
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape.N, 1, 28, 28, generator=gen).to(device)
    target = torch.randint(0, 10, (shape.N,), generator=gen).to(device)

    def case(impl: str, model: torch.nn.Module, **fields) -> Case:
        model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())

        def run():
            torch.manual_seed(2)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            return (loss.detach(), *[p.grad for p in params])
        return Case(shape, "train_step", impl, run, "model", shape.flops, **fields)

    cases = [case("torch", SimpleCNN("torch", seed=0))]
    if tf32_column:
        cases.append(case("torch-tf32", SimpleCNN("torch", seed=0), tf32=True))
    for algo in algorithms:
        choice = _train_choice(shape, device) if algo == "auto" else None
        cases.append(case(algo, SimpleCNN("convkit", algorithm=algo, seed=0), choice=choice))
    return cases


def _train_choice(shape: TrainShape, device: torch.device) -> Callable[[], str]:
    def choice():
        conv1, conv2 = simple_cnn_convs(shape.N)
        # conv1's input needs no gradient, so it has no backward-input pass
        c1 = auto_choice(conv1, device, ("forward", "backward_weight"))
        c2 = auto_choice(conv2, device, PASSES["conv_fwd_bwd"])
        return f"conv1 {c1}; conv2 {c2}"
    return choice


def build_cases(shape, op: str, device: torch.device, algorithms: Sequence[str] = ALGORITHMS,
                tf32_column: Optional[bool] = None) -> List[Case]:
    """All cases of one (shape, op): torch first, so later rows can be validated against it.
    The TF32 column exists on CUDA only (by default)."""
    if tf32_column is None:
        tf32_column = device.type == "cuda"
    if isinstance(shape, ConvShape):
        return conv_cases(shape, op, device, algorithms, tf32_column)
    if isinstance(shape, PlaneShape):
        return plane_cases(shape, op, device, bool(algorithms))
    return train_cases(shape, device, algorithms, tf32_column)
