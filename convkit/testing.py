"""Checks for convkit's ops and for your own layers built on them, with a readable report.

One call runs what convkit's own tests run::

    import torch, convkit
    from convkit import testing

    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    mine = convkit.convert(copy.deepcopy(ref))
    report = testing.check(mine, reference=ref, shapes=[(2, 3, 8, 8), (1, 3, 9, 7)])
    print(report)              # one line per check; failures with the reason
    report.raise_if_failed()   # AssertionError carrying the same text

- **parity**: for every shape (and dtype) the outputs, the input gradients and the parameter
  gradients of ``fn`` against ``reference`` (same random inputs and output gradients);
- **gradcheck** and **gradgradcheck** in float64 (``torch.autograd``), with respect to the inputs
  and, for a module, its parameters;
- **opcheck**: ``torch.library.opcheck`` (schema, autograd registration, fake tensor, AOT
  dispatch) on every registered op (namespace ``convkit`` by default) that the forward and
  backward passes above actually dispatched, with the very arguments they got.

:func:`check_op` runs opcheck for one op and argument set. For pytest, :func:`parametrize` turns
a grid of shapes and dtypes into one test per case, and the ``convkit_check`` fixture (enable it
with ``pytest_plugins = ["convkit.testing"]`` in a conftest.py) runs :func:`check` and fails the
test with the report.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import convkit.autograd  # noqa: F401  (registers torch.ops.convkit.*)

try:  # the checks need no pytest; only parametrize and the fixture do
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

Shape = Tuple[int, ...]
# (atol, rtol) of float32/float64 values: a few units in the last place of results of size ~10.
# Gradients (sums over the batch and the plane) are judged relative to their own scale: atol is
# this atol times the reference gradient's largest magnitude.
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.float64: (1e-10, 1e-10)}
REDUCED = (torch.float16, torch.bfloat16)
# float16 / bfloat16 results are judged against the float32 computation rounded once to the
# dtype (what convkit's and torch's CPU kernels compute). Float32 sums in another order can put
# a result one rounding away from it: allow ROUNDING_UNITS units in the last place of each
# value, and 1/16 of that of the largest |value| for results that cancel to ~0.
ROUNDING_UNITS = 2


@dataclass
class Result:
    """One check of one case."""

    check: str      # "parity", "gradcheck", "gradgradcheck" or "opcheck"
    case: str       # what it ran on
    passed: bool
    message: str = ""


@dataclass
class Report:
    """Every result of a :func:`check` call; ``str(report)`` is the readable summary."""

    name: str
    results: List[Result] = field(default_factory=list)

    @property
    def failures(self) -> List[Result]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        passed = len(self.results) - len(self.failures)
        lines = [f"{self.name}: {passed} passed, {len(self.failures)} failed"]
        for r in sorted(self.results, key=lambda r: r.passed):
            lines.append(f"  {'ok    ' if r.passed else 'FAILED'} {r.check:14s} {r.case}")
            if not r.passed:
                lines.extend("      " + line for line in _trim(r.message))
        return "\n".join(lines)

    def raise_if_failed(self) -> "Report":
        """Raise AssertionError with the report when any check failed; else return self."""
        if not self.ok:
            raise AssertionError(str(self))
        return self

    def add(self, check: str, case: str, run: Callable[[], Optional[str]]) -> bool:
        """Run ``run`` (None: passed; a string or an exception: failed with that message)."""
        try:
            message = run()
        except Exception as e:  # a failing check, reported, not raised
            message = f"{type(e).__name__}: {e}"
        self.results.append(Result(check, case, message is None, message or ""))
        return message is None


def _trim(message: str, lines: int = 12) -> List[str]:
    out = [line for line in message.strip().splitlines() if line.strip()]
    return out if len(out) <= lines else out[:lines] + [f"... ({len(out) - lines} more lines)"]


# --- cases -------------------------------------------------------------------------------------

def _input_shapes(entry) -> List[Shape]:
    """A shape entry is one shape (a tuple of ints) or a tuple of shapes, one per input."""
    if all(isinstance(d, int) for d in entry):
        return [tuple(entry)]
    return [tuple(s) for s in entry]


def _describe(entry, dtype) -> str:
    shapes = ", ".join("x".join(map(str, s)) for s in _input_shapes(entry))
    return f"({shapes}) {str(dtype).replace('torch.', '')}"


def random_inputs(entry, dtype: torch.dtype, device="cpu") -> Tuple[torch.Tensor, ...]:
    """The default inputs of a case: standard normal tensors of the entry's shapes."""
    return tuple(torch.randn(s, device=device).to(dtype) for s in _input_shapes(entry))


def _leaves(tensors) -> List[torch.Tensor]:
    return [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]


def _as_module(fn, dtype):
    """A copy of a module in ``dtype`` (the caller's module is left as it is), or fn itself."""
    return copy.deepcopy(fn).to(dtype) if isinstance(fn, nn.Module) else fn


def _float_outputs(out) -> List[torch.Tensor]:
    return [t for t in tree_flatten(out)[0]
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]


def _forward_backward(fn, inputs, cotangents=None):
    """(outputs, {name: gradient} of the inputs and parameters, the output gradients used)."""
    out = fn(*inputs)
    outs = _float_outputs(out)
    if cotangents is None:
        cotangents = [torch.randn_like(o) for o in outs]
    named = [(f"input {i}", t) for i, t in enumerate(inputs)]
    if isinstance(fn, nn.Module):
        named += list(fn.named_parameters())
    named = [(n, t) for n, t in named if t.requires_grad]
    grads = torch.autograd.grad(outs, [t for _, t in named], cotangents,
                                allow_unused=True) if outs else [None] * len(named)
    return out, dict(zip((n for n, _ in named), grads)), cotangents


def _compare(got, expected, atol, rtol, what) -> Optional[str]:
    try:
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol, equal_nan=True)
    except AssertionError as e:
        return f"{what}: {e}"
    return None


def _largest(t: Optional[torch.Tensor]) -> float:
    if t is None or t.numel() == 0:
        return 0.0
    finite = t.detach().float().abs().nan_to_num(0.0, 0.0, 0.0)
    return float(finite.max())


def rounding_tolerance(expected: torch.Tensor, dtype: torch.dtype,
                       reference: Optional[torch.Tensor] = None,
                       units: float = ROUNDING_UNITS) -> Tuple[float, float]:
    """(atol, rtol) for a ``dtype`` (float16 / bfloat16) result judged against ``expected``,
    the float32 computation rounded once to ``dtype``: ``units`` units in the last place of
    each value (rtol) and 1/16 of that of the largest |expected| (atol). Where ``reference``
    (torch's own result in ``dtype``, say of a model whose layers each round) is further from
    ``expected``, atol grows to twice its largest distance: no stricter than torch itself."""
    eps = torch.finfo(dtype).eps
    rtol = units * eps
    atol = rtol / 16 * _largest(expected)
    if reference is not None and reference.numel():
        atol = max(atol, 2 * _largest(reference.float() - expected.float()))
    return atol, rtol


def assert_close_rounded(got: torch.Tensor, computed: torch.Tensor,
                         reference: Optional[torch.Tensor] = None,
                         units: float = ROUNDING_UNITS, what: str = "result") -> None:
    """Assert that ``got`` (float16 / bfloat16) is the float32 result ``computed`` rounded once
    to ``got``'s dtype, within :func:`rounding_tolerance` (``reference``: torch's own result in
    that dtype, see there). A result 5 % off fails in either dtype."""
    dtype = got.dtype
    expected = computed.detach().to(dtype)
    atol, rtol = rounding_tolerance(expected, dtype, reference, units)
    torch.testing.assert_close(got.detach().float(), expected.float(), atol=atol, rtol=rtol,
                               equal_nan=True, msg=lambda m: f"{what} ({dtype}) against the "
                               f"float32 computation rounded once to it:\n{m}")


def _float32_twin(fn):
    """``fn`` computing in float32: a module copied to float32; a function as it is (it gets
    float32 inputs)."""
    return copy.deepcopy(fn).to(torch.float32) if isinstance(fn, nn.Module) else fn


def _run_case(fn, reference, inputs, dtype, atol, rtol, recorder) -> Optional[str]:
    """fn forward and backward (under ``recorder``), against ``reference`` when given.

    float32/float64: against the reference in the same dtype (gradients: atol relative to the
    gradient's scale). float16/bfloat16 (unless ``atol`` is given): against the reference
    computed in float32 on the same (rounded) inputs and output gradients, rounded once to
    ``dtype`` (:func:`assert_close_rounded`), torch's own result in ``dtype`` setting the
    floor of the tolerance."""
    with recorder if recorder is not None else contextlib.nullcontext():
        out, grads, cotangents = _forward_backward(fn, _leaves(inputs))
    if reference is None:
        return None
    ref_out, ref_grads, _ = _forward_backward(reference, _leaves(inputs),
                                              [c.clone() for c in cotangents])
    if len(grads) != len(ref_grads):  # matched in order: a wrapper may name parameters apart
        return (f"gradients of {list(grads)} from fn but of {list(ref_grads)} from the "
                "reference (different parameters?)")
    pairs = [("output", out, ref_out, None)] + [
        (f"grad of {n}", g, r, None) for (n, g), r in zip(grads.items(), ref_grads.values())]
    if dtype in REDUCED and atol is None:
        ref32 = _float32_twin(reference)
        x32 = [t.float() if t.is_floating_point() else t for t in inputs]
        out32, grads32, _ = _forward_backward(ref32, _leaves(x32),
                                              [c.float() for c in cotangents])
        pairs = [(what, g, r, e) for (what, g, r, _), e in
                 zip(pairs, [out32] + list(grads32.values()))]
    problems = []
    for what, g, r, e in pairs:
        if g is None or r is None:
            if (g is None) != (r is None):
                problems.append(f"{what}: {'no gradient' if g is None else 'a gradient'} from "
                                f"fn, {'none' if r is None else 'one'} from the reference")
            continue
        if e is not None:
            problems.append(_rounded_problem(g, e, r, what))
            continue
        a, t = (atol, rtol) if atol is not None else TOLERANCES.get(dtype, (1e-4, 1e-4))
        if what != "output" and atol is None:
            a = a * _largest(r)
        problems.append(_compare(g, r, a, t, what))
    problems = [p for p in problems if p]
    return "\n".join(problems) if problems else None


def _rounded_problem(got, computed, reference, what) -> Optional[str]:
    gs, cs, rs = (tree_flatten(t)[0] for t in (got, computed, reference))
    for i, (g, c, r) in enumerate(zip(gs, cs, rs)):
        if not (isinstance(g, torch.Tensor) and g.is_floating_point()):
            if not torch.equal(torch.as_tensor(g), torch.as_tensor(r)):
                return f"{what} [{i}]: differs from the reference's"
            continue
        try:
            assert_close_rounded(g, c, r, what=what)
        except AssertionError as e:
            return str(e)
    return None


def _functional(fn, inputs):
    """(f, tensors): f(*tensors) is fn on the inputs, the parameters of a module included."""
    if not isinstance(fn, nn.Module):
        return fn, tuple(inputs)
    names = [n for n, _ in fn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in fn.named_parameters())
    k = len(inputs)

    def f(*tensors):
        return torch.func.functional_call(fn, dict(zip(names, tensors[k:])), tensors[:k])

    return f, tuple(inputs) + params


def _gradcheck(fn, inputs, second: bool, fast_mode: bool) -> Optional[str]:
    f, tensors = _functional(_as_module(fn, torch.float64), _leaves(inputs))
    checker = torch.autograd.gradgradcheck if second else torch.autograd.gradcheck
    checker(f, tensors, fast_mode=fast_mode, raise_exception=True)
    return None


# --- opcheck of the ops a forward/backward dispatched ------------------------------------------

class OpRecorder(TorchDispatchMode):
    """Records the registered ops of ``namespaces`` dispatched while it is active, each with a
    copy of its arguments (strides kept; float tensors require grad where the op is functional,
    so opcheck also checks its autograd), at most ``per_op`` distinct argument sets per op.
    convkit's Python entry points see the mode and go through the dispatcher."""

    def __init__(self, namespaces: Sequence[str] = ("convkit",), per_op: int = 3):
        super().__init__()
        self.namespaces = tuple(namespaces)
        self.per_op = per_op
        self.calls: Dict[tuple, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in self.namespaces:
            key = (func.name(),) + tuple(_signature(a) for a in tree_flatten((args, kwargs))[0])
            seen = sum(1 for k in self.calls if k[0] == key[0])
            if key not in self.calls and seen < self.per_op:
                grad = not func._schema.is_mutable
                self.calls[key] = (func, _copy_args(args, grad), _copy_args(kwargs, grad))
        return func(*args, **kwargs)


def _signature(a):
    if isinstance(a, torch.Tensor):
        return (tuple(a.shape), a.dtype, tuple(a.stride()), a.device.type)
    return a if isinstance(a, (int, float, bool, str, type(None))) else repr(a)


def _copy_args(tree, requires_grad: bool):
    def copy_tensor(t):
        try:  # the very strides, unless they overlap (an expanded gradient): then contiguous
            c = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
            c.copy_(t.detach())
        except RuntimeError:
            c = t.detach().clone(memory_format=torch.contiguous_format)
        return c.requires_grad_(requires_grad and c.is_floating_point())

    if isinstance(tree, torch.Tensor):
        return copy_tensor(tree)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_copy_args(a, requires_grad) for a in tree)
    if isinstance(tree, dict):
        return {k: _copy_args(v, requires_grad) for k, v in tree.items()}
    return tree


def _describe_call(func, args) -> str:
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            fmt = "cl" if (a.dim() == 4 and not a.is_contiguous()
                           and a.is_contiguous(memory_format=torch.channels_last)) else ""
            parts.append("x".join(map(str, a.shape)) + fmt + ":" +
                         str(a.dtype).replace("torch.", ""))
        else:
            parts.append(repr(a))
    return f"{func.name()}({', '.join(parts)})"


def _opcheck(func, args, kwargs) -> Optional[str]:
    results = torch.library.opcheck(func, args, kwargs, raise_exception=False)
    bad = {k: v for k, v in results.items() if v != "SUCCESS"}
    return None if not bad else "\n".join(f"{k}: {v}" for k, v in bad.items())


def check_op(op, args: Sequence, kwargs: Optional[dict] = None,
             report: Optional[Report] = None) -> Report:
    """``torch.library.opcheck`` of one op (an OpOverload such as
    ``torch.ops.convkit.conv2d.default``) on one argument set, as a :class:`Report`."""
    if report is None:
        report = Report(f"convkit.testing.check_op({op})")
    report.add("opcheck", _describe_call(op, args), lambda: _opcheck(op, tuple(args),
                                                                      kwargs or {}))
    return report


# --- the one call -----------------------------------------------------------------------------

def check(fn: Union[Callable, nn.Module], reference: Union[Callable, nn.Module, None] = None,
          shapes: Iterable = ((2, 3, 8, 8),), *,
          inputs: Optional[Callable[..., Tuple[torch.Tensor, ...]]] = None,
          dtypes: Sequence[torch.dtype] = (torch.float32,), grad_shapes: Optional[Iterable] = None,
          gradcheck: bool = True, gradgradcheck: bool = True, opcheck: bool = True,
          namespaces: Sequence[str] = ("convkit",), opchecks_per_op: int = 3,
          atol: Optional[float] = None, rtol: Optional[float] = None, device="cpu",
          fast_mode: bool = False, seed: int = 0, name: Optional[str] = None) -> Report:
    """Check ``fn`` (a function of tensors or a module) and return a :class:`Report`.

    ``shapes``: the grid; each entry is one input's shape, or a tuple of shapes for a function
    of several tensors. ``inputs(entry, dtype, device)`` builds a case's inputs instead of
    :func:`random_inputs` (distinct values for a max-pool, say). For every entry and dtype,
    ``fn`` runs forward and backward (inputs and output gradients seeded) under an
    :class:`OpRecorder`, and against ``reference`` when one is given (tolerances: ``atol`` /
    ``rtol`` for values and gradients alike, else :data:`TOLERANCES` by dtype with gradients
    judged relative to their scale, and float16 / bfloat16 against the float32 computation
    rounded once, :func:`assert_close_rounded`). gradcheck and gradgradcheck run
    in float64 on ``grad_shapes`` (default: the first entry; ``fast_mode`` as torch's). Modules
    are copied into each dtype; the ones passed in are not changed.
    """
    shapes = list(shapes)
    make = inputs or random_inputs
    report = Report(name or f"convkit.testing.check({getattr(fn, '__name__', type(fn).__name__)})")
    recorder = OpRecorder(namespaces, opchecks_per_op)
    for i, (entry, dtype) in enumerate(itertools.product(shapes, dtypes)):
        torch.manual_seed(seed + i)
        case_inputs = make(entry, dtype, device)
        report.add("parity" if reference is not None else "forward+backward",
                   _describe(entry, dtype),
                   lambda x=case_inputs, dtype=dtype: _run_case(
                       _as_module(fn, dtype), _as_module(reference, dtype), x, dtype, atol, rtol,
                       recorder if opcheck else None))
    for entry in (shapes[:1] if grad_shapes is None else list(grad_shapes)):
        torch.manual_seed(seed)
        x64 = make(entry, torch.float64, device)
        case = _describe(entry, torch.float64)
        if gradcheck:
            report.add("gradcheck", case, lambda x=x64: _gradcheck(fn, x, False, fast_mode))
        if gradgradcheck:
            report.add("gradgradcheck", case, lambda x=x64: _gradcheck(fn, x, True, fast_mode))
    for func, args, kwargs in recorder.calls.values():
        check_op(func, args, kwargs, report)
    return report


# --- pytest ----------------------------------------------------------------------------------

def parametrize(shapes: Iterable, dtypes: Sequence[torch.dtype] = (torch.float32,),
                names: str = "shape,dtype"):
    """``pytest.mark.parametrize`` over the grid ``shapes`` x ``dtypes``, one readable id per
    case (``2x3x8x8-float32``)::

        @testing.parametrize([(1, 3, 8, 8), (2, 3, 9, 7)], [torch.float32, torch.float64])
        def test_my_layer(shape, dtype):
            testing.check(mine, ref, [shape], dtypes=[dtype]).raise_if_failed()
    """
    if pytest is None:  # pragma: no cover
        raise ImportError("convkit.testing.parametrize needs pytest")
    grid = list(itertools.product(list(shapes), dtypes))
    ids = [_describe(s, d).strip("()").replace(") ", "-").replace(", ", "+") for s, d in grid]
    return pytest.mark.parametrize(names, grid, ids=ids)


if pytest is not None:
    @pytest.fixture
    def convkit_check():
        """:func:`check` that fails the test with the report (``pytest_plugins =
        ["convkit.testing"]`` in a conftest.py makes this fixture available)."""
        def run(*args, **kwargs) -> Report:
            report = check(*args, **kwargs)
            if not report.ok:
                pytest.fail(str(report), pytrace=False)
            return report

        return run


__all__ = ["check", "check_op", "parametrize", "random_inputs", "assert_close_rounded",
           "rounding_tolerance", "OpRecorder", "Report", "Result", "TOLERANCES", "ROUNDING_UNITS"]
