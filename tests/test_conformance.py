"""Conformance with the test data torch ships in its wheel (``torch.testing._internal``).

Three sources, each run against torch itself (never against convkit):

- ``op_db`` OpInfos ``nn.functional.conv2d / relu / max_pool2d``: sample_inputs and
  reference_inputs in every dtype torch supports on the CPU (values, output dtype, output
  strides, gradients with the same output gradient), the same samples noncontiguous
  (``SampleInput.noncontiguous``, test_ops' test_noncontiguous_samples) and channels-last,
  error_inputs (exception type and torch's regex), and test_ops_gradients' checks in float64
  (gradcheck with batched gradients, gradgradcheck, fwgrad_bwgrad, forward-mode AD) with the
  OpInfo's own flags;
- ``module_db`` ModuleInfos ``nn.Conv2d / ReLU / MaxPool2d``: module_inputs forward and backward,
  module_error_inputs, test_modules' memory-format and non-contiguous checks, state_dict and
  pickle round trips, gradcheck / gradgradcheck of inputs and parameters (batched gradients on);
- ``common_nn`` ``module_tests`` + ``get_new_module_tests()`` entries for these modules, run as
  test_nn.py runs them (``NewModuleTest(test_case)``: non-contiguous, pickle, gradcheck and
  gradgradcheck with ``check_batched_grad=True``, dtype casts), plus the module's Jacobian
  (``torch.autograd.functional.jacobian(vectorize=True)``) against the torch module's.

Each test runs many cases (samples); every case is counted per op as passed, failed (values,
or "layout only": values equal, strides not torch's) or skipped with the reason. The counts
print at the end of the module; ``CONVKIT_CONFORMANCE_SUMMARY=path.md`` also writes them as a
Markdown table, and ``python tests/test_conformance.py [pytest args]`` runs the suite and prints
that table. What convkit does not claim is skipped with the reason (complex dtypes, int64
conv2d, Conv2d on zero input channels). max_pool2d's 1440 samples run in float32 as given; the
other dtypes and layouts every 8th and the float64 gradient checks every 24th, counted as "not
run (time)" (``CONVKIT_CONFORMANCE_FULL=1`` runs all). ``CONVKIT_CONFORMANCE_SHOW=N`` lists up
to N failing cases per test (25).
"""
from __future__ import annotations

import collections
import copy
import io
import itertools
import os
import re
import sys
import warnings

import pytest
import torch

pytest.importorskip("expecttest", reason="torch.testing._internal imports expecttest "
                    "(pip install -e '.[test]')")

from torch.testing._internal import common_nn  # noqa: E402
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

# common_utils freezes torch.backends' flags at import (torch.backends.disable_global_flags(),
# for PyTorch's own suite): this module is imported at collection, so undo it, or every later
# test in the session that sets a cudnn / deterministic flag (convkit train) raises
# (torch.backends is a module wrapper: the flag lives in its functions' globals)
torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
assert not torch.backends.flags_frozen()

import convkit  # noqa: E402
import convkit.functional as CF  # noqa: E402
from convkit import nn as cnn  # noqa: E402

FULL = os.environ.get("CONVKIT_CONFORMANCE_FULL") == "1"
# max_pool2d's OpInfo has 1440 samples (a product of shapes and arguments): all of them run in
# float32 as given; the other dtypes and layouts run every 8th (each its own offset, so
# together they cover every sample), the float64 gradient checks every 24th
POOL_VALUES_EVERY = 1 if FULL else 8
POOL_GRAD_EVERY = 1 if FULL else 24
SHOW = int(os.environ.get("CONVKIT_CONFORMANCE_SHOW", "25"))  # failing cases listed per test
# outputs and gradients must have torch's strides (torch's suggest_memory_format rule for
# every op, its backward included); a case whose values pass but whose layout differs counts
# as failed, "layout only"
CHECK_STRIDES = True

# --- what is compared with what -----------------------------------------------------------------

OPS = {"nn.functional.conv2d": ("conv2d", CF.conv2d),
       "nn.functional.relu": ("relu", CF.relu),
       "nn.functional.max_pool2d": ("max_pool2d", CF.max_pool2d)}
OPINFOS = [o for o in op_db if o.name in OPS]
MODULES = {torch.nn.Conv2d: ("conv2d", cnn.Conv2d), torch.nn.ReLU: ("relu", cnn.ReLU),
           torch.nn.MaxPool2d: ("max_pool2d", cnn.MaxPool2d)}
MODULEINFOS = [m for m in module_db if m.module_cls in MODULES]

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
CLAIMED = {"conv2d": FLOATS, "relu": FLOATS + INTS, "max_pool2d": FLOATS + INTS}


def _unclaimed(op: str, dtype: torch.dtype):
    """Why convkit does not claim ``dtype`` for ``op`` (None: it does)."""
    if dtype.is_complex:
        return "complex dtypes: out of scope"
    if dtype not in CLAIMED[op]:
        name = str(dtype).replace("torch.", "")
        return f"{op}: {name} not claimed (convkit's conv2d takes float dtypes)"
    return None


# (rtol, atol relative to the output's largest magnitude) of a conv: two roundings of one sum
CONV_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3,
            torch.bfloat16: 1.6e-2}


# --- counting -----------------------------------------------------------------------------------

# SUMMARY[op][check] = Counter(passed=..., failed=..., "skipped: why"=...)
SUMMARY: dict = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))


class Skip(Exception):
    """A case convkit does not claim; the message is the reason."""


class Cases:
    """Runs one test's cases, counts each under (op, check) and fails the test with every
    failing case listed."""

    def __init__(self, op: str, check: str):
        self.op, self.check, self.failures = op, check, []

    def run(self, case: str, fn) -> None:
        counts = SUMMARY[self.op][self.check]
        _LAYOUTS_DIFFERING.clear()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
            if _LAYOUTS_DIFFERING:
                raise LayoutMismatch("; ".join(_LAYOUTS_DIFFERING))
        except Skip as e:
            counts[f"skipped: {e}"] += 1
        except LayoutMismatch as e:
            counts["failed"] += 1
            counts["failed: layout only"] += 1
            self.failures.append(f"{case}\n      layout only: {e}")
        except Exception as e:  # a failing case is reported with the others, not raised alone
            counts["failed"] += 1
            msg = f"{type(e).__name__}: {e}".strip().splitlines()
            self.failures.append(f"{case}\n      " + "\n      ".join(msg[:3]))
        else:
            counts["passed"] += 1

    def skip_all(self, n: int, reason: str) -> None:
        SUMMARY[self.op][self.check][f"skipped: {reason}"] += n
        pytest.skip(f"{n} case(s): {reason}")

    def sampled_out(self, n: int) -> None:
        """``n`` cases not run to keep the suite's time (CONVKIT_CONFORMANCE_FULL=1 runs them)."""
        SUMMARY[self.op][self.check]["sampled out"] += n

    def finish(self) -> None:
        if self.failures:
            shown = self.failures[:SHOW]
            more = len(self.failures) - len(shown)
            pytest.fail(f"{len(self.failures)} case(s) differ from torch:\n  " +
                        "\n  ".join(shown) + (f"\n  ... {more} more" if more else ""),
                        pytrace=False)


# --- comparing convkit's results with torch's ---------------------------------------------------

def _clone(t, requires_grad=None):
    """A new leaf with the same values, strides, storage offset and dtype, on its own copy of
    the storage (overlapping views stay overlapping); ``requires_grad`` kept unless given."""
    if not isinstance(t, torch.Tensor):
        return t
    with torch.no_grad():
        c = torch.empty(0, dtype=t.dtype, device=t.device).set_(
            t.untyped_storage().clone(), t.storage_offset(), t.shape, t.stride())
    rg = t.requires_grad if requires_grad is None else requires_grad
    return c.requires_grad_(rg and (c.is_floating_point() or c.is_complex()))


class LayoutMismatch(AssertionError):
    """Values, dtypes and shapes equal torch's; the strides of some result differ."""


_LAYOUTS_DIFFERING: list = []  # of the case running now, raised once its values all passed


def _same_layout(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """dtype and shape now; the strides (of every dim of size > 1) at the end of the case."""
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype}, torch {expected.dtype}"
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)}, torch " \
                                        f"{tuple(expected.shape)}"
    if CHECK_STRIDES and expected.numel() > 1:
        sized = [d for d in range(expected.dim()) if expected.shape[d] > 1]
        g, e = [got.stride(d) for d in sized], [expected.stride(d) for d in sized]
        if g != e:
            _LAYOUTS_DIFFERING.append(f"{what}: strides {tuple(got.stride())}, torch "
                                      f"{tuple(expected.stride())} (shape "
                                      f"{tuple(expected.shape)})")


def _close(got: torch.Tensor, expected: torch.Tensor, what: str, exact: bool) -> None:
    _same_layout(got, expected, what)
    if exact or not expected.is_floating_point() or expected.numel() == 0:
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m:
                                   f"{what}: not bit-equal to torch's\n{m}")
        return
    tol = CONV_TOL[expected.dtype]
    scale = max(1.0, expected.detach().abs().max().item())
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * scale, equal_nan=True,
                               msg=lambda m: f"{what}: differs from torch's\n{m}")


def _tensors(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _forward_backward(fn, args, kwargs, grad_outputs=None):
    """fn(*args, **kwargs), and the gradients of its float outputs (given or drawn) with
    respect to every float tensor argument requiring grad."""
    out = fn(*args, **kwargs)
    leaves = [a for a in list(args) + list(kwargs.values())
              if isinstance(a, torch.Tensor) and a.requires_grad]
    outs = [o for o in _tensors(out) if isinstance(o, torch.Tensor) and o.requires_grad]
    if not leaves or not outs:
        return out, [], None
    if grad_outputs is None:
        grad_outputs = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, leaves, grad_outputs, allow_unused=True)
    return out, list(grads), grad_outputs


def _compare_call(ck_fn, torch_fn, args, kwargs, exact, what="", exact_grads=None):
    """convkit and torch on separate copies of the same arguments: outputs (values, dtype,
    strides) and the gradients of every input requiring grad (bit-equal where ``exact`` /
    ``exact_grads``, else within two roundings of the dtype)."""
    exact_grads = exact if exact_grads is None else exact_grads
    ck_args = [_clone(a) for a in args]
    ck_kwargs = {k: _clone(v) for k, v in kwargs.items()}
    th_args = [_clone(a) for a in args]
    th_kwargs = {k: _clone(v) for k, v in kwargs.items()}
    expected, th_grads, grad_outputs = _forward_backward(torch_fn, th_args, th_kwargs)
    got, ck_grads, _ = _forward_backward(
        ck_fn, ck_args, ck_kwargs,
        None if grad_outputs is None else [g.clone() for g in grad_outputs])
    gots, exps = _tensors(got), _tensors(expected)
    assert len(gots) == len(exps), f"{what}: {len(gots)} outputs, torch {len(exps)}"
    for i, (g, e) in enumerate(zip(gots, exps)):
        _close(g, e, f"{what}output {i}", exact or not e.is_floating_point())
    assert len(ck_grads) == len(th_grads)
    for i, (g, e) in enumerate(zip(ck_grads, th_grads)):
        if e is None or g is None:
            assert g is None and e is None, f"{what}grad of argument {i}: one side is None"
            continue
        _close(g, e, f"{what}grad of argument {i}", exact_grads)
    return got


def _sample_id(s) -> str:
    def d(a):
        if isinstance(a, torch.Tensor):
            return f"{tuple(a.shape)}:{str(a.dtype).replace('torch.', '')}" + \
                   ("" if a.is_contiguous() else f"@{tuple(a.stride())}")
        return repr(a)
    args = ", ".join([d(s.input)] + [d(a) for a in s.args] +
                     [f"{k}={d(v)}" for k, v in s.kwargs.items()])
    return f"({args})"


def _opinfo_id(o) -> str:
    return o.name.split(".")[-1] + (f".{o.variant_test_name}" if o.variant_test_name else "")


def _conv_unclaimed_sample(op: str, s):
    if op == "conv2d" and s.input.dim() >= 3 and s.input.shape[-3] == 0:
        return ("conv2d on zero input channels: convkit returns the bias "
                "(torch a zero-size or zero output)")
    return None


# --- op_db: samples, reference inputs, noncontiguous, channels-last, errors ---------------------

DTYPE_CASES = [pytest.param(o, dt, id=f"{_opinfo_id(o)}-{str(dt).replace('torch.', '')}")
               for o in OPINFOS for dt in sorted(o.supported_dtypes("cpu"), key=str)]

LAYOUTS = ("samples", "reference_inputs", "noncontiguous", "channels_last")
DTYPES_ORDER = sorted(set().union(*(o.supported_dtypes("cpu") for o in OPINFOS)), key=str)


def _channels_last(s):
    def cl(t):
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            return _clone(t.contiguous(memory_format=torch.channels_last))
        return t
    return s.transform(cl)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("opinfo,dtype", DTYPE_CASES)
def test_opinfo_samples(opinfo, dtype, layout):
    """Every sample (or reference input) of the OpInfo, as given, made noncontiguous, or with
    its 4-D tensors channels-last: convkit's outputs and gradients against torch's."""
    op, ck_fn = OPS[opinfo.name]
    cases = Cases(op, f"op_db {layout}")
    grad = dtype in opinfo.supported_backward_dtypes("cpu")
    if layout == "reference_inputs":
        if opinfo.reference_inputs_func is None:
            pytest.skip("no reference_inputs_func: reference_inputs are the sample_inputs")
        samples = list(opinfo.reference_inputs("cpu", dtype, requires_grad=grad))
    else:
        samples = list(opinfo.sample_inputs("cpu", dtype, requires_grad=grad))
    reason = _unclaimed(op, dtype)
    if reason:
        cases.skip_all(len(samples), reason)
    exact = op != "conv2d"
    # max_pool2d's backward sums the gradients of overlapping windows: convkit in float32,
    # rounded once; torch's CPU kernel in float16/bfloat16 itself (it rounds at every sum)
    exact_grads = exact and not (op == "max_pool2d" and dtype in (torch.float16,
                                                                  torch.bfloat16))
    if op == "max_pool2d" and not (dtype == torch.float32 and layout == "samples"):
        every = POOL_VALUES_EVERY
        offset = (DTYPES_ORDER.index(dtype) + LAYOUTS.index(layout)) % every
        cases.sampled_out(sum(1 for i in range(len(samples)) if i % every != offset))
        samples = [s for i, s in enumerate(samples) if i % every == offset]
    for s in samples:
        if layout == "noncontiguous":
            s = s.noncontiguous()
        elif layout == "channels_last":
            if not any(isinstance(t, torch.Tensor) and t.dim() == 4
                       for t in [s.input, *s.args]):
                continue  # nothing to lay out channels-last: counted under samples
            s = _channels_last(s)

        def case(s=s):
            why = _conv_unclaimed_sample(op, s)
            if why:
                raise Skip(why)
            _compare_call(ck_fn, opinfo.op, [s.input, *s.args], dict(s.kwargs), exact,
                          exact_grads=exact_grads)

        cases.run(_sample_id(s), case)
    cases.finish()


@pytest.mark.parametrize("opinfo", [o for o in OPINFOS if o.error_inputs_func is not None],
                         ids=_opinfo_id)
def test_opinfo_error_inputs(opinfo):
    """Each error input raises torch's exception type with a message torch's regex matches."""
    op, ck_fn = OPS[opinfo.name]
    cases = Cases(op, "op_db error_inputs")
    for ei in opinfo.error_inputs("cpu"):
        s = ei.sample_input

        def case(ei=ei, s=s):
            with pytest.raises(ei.error_type, match=ei.error_regex):  # torch itself, as a check
                opinfo.op(s.input, *s.args, **s.kwargs)
            try:
                ck_fn(s.input, *s.args, **s.kwargs)
            except Exception as e:
                assert isinstance(e, ei.error_type), \
                    f"raised {type(e).__name__}: {e}; torch raises {ei.error_type.__name__}"
                assert re.search(ei.error_regex, str(e)), \
                    f"message {str(e)!r} does not match torch's regex {ei.error_regex!r}"
            else:
                raise AssertionError(f"no exception; torch raises {ei.error_type.__name__} "
                                     f"matching {ei.error_regex!r}")

        cases.run(_sample_id(s), case)
    cases.finish()


# --- op_db: test_ops_gradients' checks in float64 -----------------------------------------------

GRAD_CHECKS = ("gradcheck", "gradgradcheck", "fwgrad_bwgrad", "forward_ad")


def _gradcheck_fn(ck_fn, opinfo, s):
    """test_ops' gradcheck function: the tensors requiring grad as varargs, put back into the
    sample's arguments."""
    all_args = (s.input, *s.args, *s.kwargs.values())
    inputs = tuple(a for a in all_args if isinstance(a, torch.Tensor) and a.requires_grad)

    def fn(*tensors):
        it = iter(tensors)

        def put(a):
            return next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a
        args = [put(a) for a in (s.input, *s.args)]
        kwargs = {k: put(v) for k, v in s.kwargs.items()}
        out = opinfo.gradcheck_wrapper(ck_fn, *args, **kwargs)
        return s.output_process_fn_grad(out) if s.output_process_fn_grad is not None else out

    return fn, inputs


def _run_grad_check(check, opinfo, fn, inputs):
    o = opinfo
    common = dict(check_grad_dtypes=True, nondet_tol=o.gradcheck_nondet_tol,
                  fast_mode=o.gradcheck_fast_mode)
    if check == "gradcheck":
        assert torch.autograd.gradcheck(fn, inputs, check_batched_grad=o.check_batched_grad,
                                        check_undefined_grad=True, **common)
    elif check == "forward_ad":
        assert torch.autograd.gradcheck(
            fn, inputs, check_forward_ad=True, check_backward_ad=False,
            check_batched_grad=False, check_undefined_grad=False,
            check_batched_forward_grad=o.check_batched_forward_grad, **common)
    else:
        for noncontig in (False, True):
            kwargs = dict(gen_non_contig_grad_outputs=noncontig,
                          check_batched_grad=o.check_batched_gradgrad, **common)
            if check == "fwgrad_bwgrad":
                kwargs.update(check_fwd_over_rev=True, check_rev_over_rev=False,
                              check_batched_grad=False, check_undefined_grad=False)
            assert torch.autograd.gradgradcheck(fn, inputs, **kwargs)


GRAD_CASES = [pytest.param(o, c, id=f"{_opinfo_id(o)}-{c}") for o in OPINFOS
              for c in GRAD_CHECKS]


@pytest.mark.parametrize("opinfo,check", GRAD_CASES)
def test_opinfo_gradients(opinfo, check):
    """test_ops_gradients' test_fn_grad / test_fn_gradgrad / test_fn_fwgrad_bwgrad /
    test_forward_mode_AD on convkit's op, float64, with the OpInfo's flags (batched gradients
    as the OpInfo asks: on for all three ops' first-order check)."""
    op, ck_fn = OPS[opinfo.name]
    cases = Cases(op, f"op_db {check}")
    wanted = {"gradcheck": opinfo.supports_autograd,
              "gradgradcheck": opinfo.supports_gradgrad,
              "fwgrad_bwgrad": opinfo.supports_fwgrad_bwgrad,
              "forward_ad": opinfo.supports_forward_ad}[check]
    if not wanted:
        pytest.skip(f"the OpInfo does not support {check}")
    samples = list(opinfo.sample_inputs("cpu", torch.float64, requires_grad=True))
    every = POOL_GRAD_EVERY if op == "max_pool2d" else 1
    cases.sampled_out(sum(1 for i in range(len(samples)) if i % every))
    for i, s in enumerate(samples):
        if i % every:
            continue

        def case(s=s):
            why = _conv_unclaimed_sample(op, s)
            if why:
                raise Skip(why)
            fn, inputs = _gradcheck_fn(ck_fn, opinfo, s)
            _run_grad_check(check, opinfo, fn, inputs)

        cases.run(_sample_id(s), case)
    cases.finish()


def test_opinfo_complex_gradients_not_claimed():
    """test_ops_gradients also runs complex128: out of scope, counted as skipped."""
    for o in OPINFOS:
        n = sum(len(list(o.sample_inputs("cpu", dt, requires_grad=True)))
                for dt in o.supported_backward_dtypes("cpu") if dt.is_complex)
        if n:
            op = OPS[o.name][0]
            SUMMARY[op]["op_db gradcheck"]["skipped: complex dtypes: out of scope"] += n
    pytest.skip("complex128 gradient checks: complex dtypes are out of scope")


# --- module_db ----------------------------------------------------------------------------------

def _module_id(m) -> str:
    return m.name.split(".")[-1]


MODULE_CASES = [pytest.param(m, dt, id=f"{_module_id(m)}-{str(dt).replace('torch.', '')}")
                for m in MODULEINFOS for dt in m.dtypes]


def _module_pair(minfo, module_input, dtype, memory_format=None):
    """(convkit module, torch module) built from the same constructor input, with the same
    parameters (the torch module's initialisation copied into convkit's)."""
    ck_cls = MODULES[minfo.module_cls][1]
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    th = minfo.module_cls(*args, **kwargs).to(dtype)
    ck = ck_cls(*args, **kwargs).to(dtype)
    ck.load_state_dict(th.state_dict())
    if memory_format is not None:
        th.to(memory_format=memory_format)
        ck.to(memory_format=memory_format)
    return ck, th


def _module_input_id(mi) -> str:
    c = mi.constructor_input
    f = mi.forward_input
    shapes = [tuple(a.shape) for a in f.args if isinstance(a, torch.Tensor)] if f else []
    return f"{c.args}{c.kwargs or ''} on {shapes}" + (f" [{mi.desc}]" if mi.desc else "")


def _module_inputs(minfo, dtype):
    return [mi for mi in minfo.module_inputs_func(minfo, device="cpu", dtype=dtype,
                                                  requires_grad=True, training=True)
            if mi.forward_input is not None]


def _compare_modules(ck, th, args, kwargs, what=""):
    # parameters: zero their grads on both sides first (autograd.grad does not fill .grad)
    for m in (ck, th):
        m.zero_grad(set_to_none=True)
    ck_args = [_clone(a) for a in args]
    th_args = [_clone(a) for a in args]
    th_out = th(*th_args, **kwargs)
    ck_out = ck(*ck_args, **kwargs)
    th_outs, ck_outs = _tensors(th_out), _tensors(ck_out)
    for i, (g, e) in enumerate(zip(ck_outs, th_outs)):
        _close(g, e, f"{what}output {i}", not e.is_floating_point() or
               not isinstance(th, torch.nn.Conv2d))
    diff = [(g, e) for g, e in zip(ck_outs, th_outs) if e.requires_grad]
    if diff:
        gos = [torch.randn_like(e) for _, e in diff]
        torch.autograd.backward([e for _, e in diff], gos)
        torch.autograd.backward([g for g, _ in diff], [g.clone() for g in gos])
        exact = not isinstance(th, torch.nn.Conv2d)
        for i, (a, b) in enumerate(zip(ck_args, th_args)):
            if isinstance(b, torch.Tensor) and b.grad is not None:
                _close(a.grad, b.grad, f"{what}grad of input {i}", exact)
        for (n, p), (_, q) in zip(ck.named_parameters(), th.named_parameters()):
            if q.grad is not None:
                _close(p.grad, q.grad, f"{what}grad of {n}", exact)
    return ck_out


MODULE_CHECKS = ("forward_backward", "memory_format", "non_contiguous", "state_dict",
                 "gradcheck", "gradgradcheck")


def _to_memory_format(t, fmt):
    if not isinstance(t, torch.Tensor):
        return t
    if fmt == torch.channels_last and t.dim() != 4:
        return _clone(t)
    return t.clone().to(memory_format=fmt).detach().requires_grad_(t.requires_grad)


def _non_contiguous(t):
    """test_modules' way: every other element of a repeat_interleave along the last dim."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return t
    out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
    return out.requires_grad_(t.requires_grad)


def _module_gradcheck(ck, args, second):
    params = tuple(p for p in ck.parameters())
    inputs = tuple(a for a in args if isinstance(a, torch.Tensor) and a.requires_grad)
    k = len(inputs)
    names = [n for n, _ in ck.named_parameters()]

    def fn(*tensors):
        out = torch.func.functional_call(ck, dict(zip(names, tensors[k:])), tensors[:k])
        return tuple(o for o in _tensors(out) if o.is_floating_point())

    check = torch.autograd.gradgradcheck if second else torch.autograd.gradcheck
    assert check(fn, inputs + params, check_batched_grad=True, nondet_tol=0.0)


@pytest.mark.parametrize("check", MODULE_CHECKS)
@pytest.mark.parametrize("minfo,dtype", MODULE_CASES)
def test_moduleinfo(minfo, dtype, check):
    """test_modules' checks on convkit's module against torch's with the same parameters."""
    op = MODULES[minfo.module_cls][0]
    cases = Cases(op, f"module_db {check}")
    if check in ("gradcheck", "gradgradcheck") and dtype != torch.float64:
        pytest.skip("gradient checks run in float64")
    for mi in _module_inputs(minfo, dtype):
        args, kwargs = mi.forward_input.args, mi.forward_input.kwargs

        def case(mi=mi, args=args, kwargs=kwargs):
            if check == "forward_backward":
                ck, th = _module_pair(minfo, mi, dtype)
                _compare_modules(ck, th, args, kwargs)
                repr(ck)
            elif check == "memory_format":
                four_d = any(isinstance(a, torch.Tensor) and a.dim() == 4 for a in args)
                input_formats = [torch.contiguous_format] + ([torch.channels_last] if four_d
                                                             else [])
                module_formats = [torch.preserve_format, torch.contiguous_format] + \
                    ([torch.channels_last] if four_d else [])
                for in_fmt, m_fmt in itertools.product(input_formats, module_formats):
                    ck, th = _module_pair(minfo, mi, dtype, m_fmt)
                    a = [_to_memory_format(t, in_fmt) for t in args]
                    out = _compare_modules(ck, th, a, kwargs, f"input {in_fmt}, module "
                                                              f"{m_fmt}: ")
                    for o in _tensors(out):  # test_modules' own rule on top of torch's strides
                        if o.dim() == 4 and o.numel() and (
                                in_fmt == torch.channels_last or
                                (m_fmt == torch.channels_last and
                                 minfo.module_memformat_affects_out)):
                            assert o.is_contiguous(memory_format=torch.channels_last), \
                                f"input {in_fmt}, module {m_fmt}: output not channels-last " \
                                f"{tuple(o.stride())}"
            elif check == "non_contiguous":
                ck, th = _module_pair(minfo, mi, dtype)
                nc = [_non_contiguous(t) for t in args]
                _compare_modules(ck, th, nc, kwargs, "non-contiguous input: ")
                # and convkit's non-contiguous result equals its contiguous one (test_modules)
                ck2 = copy.deepcopy(ck)
                a = _tensors(ck2(*[_clone(t) for t in args], **kwargs))
                b = _tensors(ck2(*[_clone(t) for t in nc], **kwargs))
                for x, y in zip(a, b):
                    torch.testing.assert_close(x, y, rtol=0, atol=0)
            elif check == "state_dict":
                ck, th = _module_pair(minfo, mi, dtype)
                with torch.no_grad():
                    for p in ck.parameters():
                        p.normal_()
                sd = ck.state_dict()
                assert list(sd) == list(th.state_dict()), "state_dict keys differ from torch's"
                buf = io.BytesIO()
                torch.save(sd, buf)
                buf.seek(0)
                th.load_state_dict(torch.load(buf))
                ck2 = MODULES[minfo.module_cls][1](*mi.constructor_input.args,
                                                   **mi.constructor_input.kwargs).to(dtype)
                ck2.load_state_dict(th.state_dict())
                _compare_modules(ck2, th, args, kwargs, "after the round trip: ")
                buf = io.BytesIO()  # test_modules' test_pickle: the whole module
                torch.save(ck, buf)
                buf.seek(0)
                ck3 = torch.load(buf, weights_only=False)
                assert type(ck3) is type(ck)
                _compare_modules(ck3, th, args, kwargs, "pickled module: ")
            else:
                ck, _ = _module_pair(minfo, mi, dtype)
                _module_gradcheck(ck, [_clone(a) for a in args], check == "gradgradcheck")

        cases.run(_module_input_id(mi), case)
    cases.finish()


@pytest.mark.parametrize("minfo", [m for m in MODULEINFOS if m.module_error_inputs_func],
                         ids=_module_id)
def test_moduleinfo_error_inputs(minfo):
    """module_error_inputs: the exception type and torch's regex, at construction or forward."""
    op, ck_cls = MODULES[minfo.module_cls]
    cases = Cases(op, "module_db error_inputs")
    for dtype in minfo.dtypes:
        for ei in minfo.module_error_inputs_func(minfo, device="cpu", dtype=dtype,
                                                 requires_grad=False, training=True):
            mi = ei.module_error_input
            c, f = mi.constructor_input, mi.forward_input

            def case(ei=ei, c=c, f=f):
                for cls in (minfo.module_cls, ck_cls):  # torch first, as a check of the data
                    if ei.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
                        with pytest.raises(ei.error_type, match=ei.error_regex):
                            cls(*c.args, **c.kwargs)
                        continue
                    m = cls(*c.args, **c.kwargs)
                    try:
                        m(*f.args, **f.kwargs)
                    except Exception as e:
                        assert isinstance(e, ei.error_type), \
                            f"{cls.__module__}: raised {type(e).__name__}: {e}"
                        assert re.search(ei.error_regex, str(e)), \
                            f"{cls.__module__}: message {str(e)!r} does not match torch's " \
                            f"regex {ei.error_regex!r}"
                    else:
                        raise AssertionError(f"{cls.__module__}: no exception; torch raises "
                                             f"{ei.error_type.__name__}")

            cases.run(f"{dtype}: {c.args}{c.kwargs or ''} on "
                      f"{[tuple(a.shape) for a in f.args]}", case)
    cases.finish()


# --- common_nn (test_nn.py's NewModuleTest) -----------------------------------------------------

class _NNCase(common_nn.NNTestCase):
    """test_nn.py's TestNN helpers, enough to run a NewModuleTest."""

    def runTest(self):  # a TestCase needs a method to be built around
        pass

    def _forward(self, module, input):
        with common_nn.freeze_rng_state():
            return module(*input) if isinstance(input, tuple) else module(input)

    def _backward(self, module, input, output, grad_output, create_graph=False):
        output.backward(grad_output, retain_graph=True, create_graph=create_graph)
        if isinstance(input, tuple):
            return tuple(i.grad.data if i.grad is not None else None for i in input)
        return input.grad.data if input.grad is not None else None

    def _get_parameters(self, module):
        params = list(module.parameters())
        return params, [p.grad for p in params]

    def _zero_grad_parameters(self, module):
        for p in module.parameters():
            if p.grad is not None:
                with torch.no_grad():
                    p.grad.zero_()
                p.grad.detach_()


def _common_nn_entries():
    out = []
    for params in common_nn.module_tests + common_nn.get_new_module_tests():
        name = params.get("module_name")
        if name is None:
            full = params.get("fullname", "")
            name = next((n for n in ("Conv2d", "MaxPool2d", "ReLU") if
                         full == n or full.startswith(n + "_")), None)
            if name is None:
                continue
        elif name not in ("Conv2d", "MaxPool2d", "ReLU"):
            continue
        out.append(params)
    return out


COMMON_NN = _common_nn_entries()


def _common_nn_id(p) -> str:
    return p.get("fullname") or p["module_name"] + ("_" + p["desc"] if p.get("desc") else "")


def _as_convkit(constructor):
    def build(*args, **kwargs):
        return convkit.convert(constructor(*args, **kwargs))
    build.__name__ = getattr(constructor, "__name__", "constructor")
    return build


@pytest.mark.parametrize("params", COMMON_NN, ids=_common_nn_id)
def test_common_nn(params):
    """The entry run as test_nn.py runs it, with the module swapped for convkit's; then its
    output and Jacobian (vectorized) against the torch module with the same parameters."""
    params = dict(params)
    name = _common_nn_id(params)
    torch_name = {"Conv2d": "conv2d", "MaxPool2d": "max_pool2d", "ReLU": "relu"}
    op = next(v for k, v in torch_name.items() if name.startswith(k))
    cases = Cases(op, "common_nn")
    th_constructor = params.pop("constructor", None) or getattr(torch.nn,
                                                                params.pop("module_name"))
    params.pop("module_name", None)
    params.pop("decorator", None)
    test = common_nn.NewModuleTest(constructor=_as_convkit(th_constructor), **params)
    tc = _NNCase()

    def run_like_test_nn():
        threads = torch.get_num_threads()
        try:  # NewModuleTest sets one thread and does not restore it when a check fails
            test(tc)
        finally:
            torch.set_num_threads(threads)

    def against_torch():
        with common_nn.set_default_dtype(test.default_dtype):
            th = th_constructor(*test.constructor_args)
            ck = convkit.convert(copy.deepcopy(th))
            x = test._get_input()
            x = x if isinstance(x, tuple) else (x,)
            for a, b in zip(_tensors(ck(*x)), _tensors(th(*x))):
                _close(a, b, "output", op != "conv2d")
            names = [n for n, _ in th.named_parameters()]
            params_ = tuple(p.detach() for p in th.parameters())
            k = len(x)

            def f(m):
                def fn(*t):
                    return torch.func.functional_call(m, dict(zip(names, t[k:])), t[:k])
                return fn

            inputs = tuple(a.detach() for a in x) + params_
            try:
                jt = torch.autograd.functional.jacobian(f(th), inputs, vectorize=True)
            except Exception as e:  # torch's jacobian of a zero-size output: IndexError
                with pytest.raises(type(e)):
                    torch.autograd.functional.jacobian(f(ck), inputs, vectorize=True)
                return
            jc = torch.autograd.functional.jacobian(f(ck), inputs, vectorize=True)
            for i, (a, b) in enumerate(zip(jc, jt)):
                _close(a, b, f"Jacobian wrt argument {i}", op != "conv2d")

    cases.run(f"{name}: test_nn", run_like_test_nn)
    cases.check = "common_nn jacobian"
    cases.run(f"{name}: jacobian(vectorize=True) vs torch", against_torch)
    cases.finish()


# --- the per-op counts --------------------------------------------------------------------------

def summary_rows():
    """[(op, check, run, passed, failed, {skip reason: count}, sampled out, failed on the
    layout only)] in a stable order."""
    rows = []
    for op in ("conv2d", "relu", "max_pool2d"):
        for check in sorted(SUMMARY[op]):
            c = SUMMARY[op][check]
            skips = {k[len("skipped: "):]: v for k, v in c.items() if k.startswith("skipped: ")}
            rows.append((op, check, c["passed"] + c["failed"], c["passed"], c["failed"], skips,
                         c["sampled out"], c["failed: layout only"]))
    return rows


def summary_markdown() -> str:
    lines = ["| op | check (torch's data) | run | passed | failed (layout only) | "
             "skipped (why) | not run (time) |", "|---|---|---:|---:|---:|---|---:|"]
    totals = collections.Counter()
    for op, check, run, passed, failed, skips, sampled, layout in summary_rows():
        why = "; ".join(f"{n}: {r}" for r, n in sorted(skips.items())) or "-"
        fail = f"{failed} ({layout})" if layout else f"{failed}"
        lines.append(f"| {op} | {check} | {run} | {passed} | {fail} | {why} | "
                     f"{sampled or '-'} |")
        totals.update(run=run, passed=passed, failed=failed, skipped=sum(skips.values()),
                      sampled=sampled, layout=layout)
    lines.append(f"| **all** | | **{totals['run']}** | **{totals['passed']}** | "
                 f"**{totals['failed']} ({totals['layout']})** | **{totals['skipped']}** | "
                 f"**{totals['sampled']}** |")
    if totals["sampled"]:
        lines.append("\nNot run (time): max_pool2d samples outside float32-as-given and its "
                     "float64 gradient checks run on every 8th / 24th sample; "
                     "`CONVKIT_CONFORMANCE_FULL=1` runs all of them.")
    return "\n".join(lines)


def summary_text() -> str:
    out = ["convkit conformance (cases from torch.testing._internal, compared with torch):"]
    for op in ("conv2d", "relu", "max_pool2d"):
        rows = [r for r in summary_rows() if r[0] == op]
        if not rows:
            continue
        run = sum(r[2] for r in rows)
        passed = sum(r[3] for r in rows)
        failed = sum(r[4] for r in rows)
        sampled = sum(r[6] for r in rows)
        layout = sum(r[7] for r in rows)
        skips = collections.Counter()
        for r in rows:
            skips.update(r[5])
        out.append(f"  {op}: run {run}, passed {passed}, failed {failed} (layout only "
                   f"{layout}), skipped {sum(skips.values())}" +
                   (f", not run (time) {sampled}" if sampled else ""))
        for _, check, r, p, f, s, n_out, lay in rows:
            extra = f" (layout only {lay})" if lay else ""
            extra += "".join(f"; skipped {n}: {why}" for why, n in sorted(s.items()))
            extra += f"; not run (time) {n_out}" if n_out else ""
            out.append(f"      {check:28s} run {r:5d}  passed {p:5d}  failed {f:4d}{extra}")
    return "\n".join(out)


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    yield
    if not SUMMARY:
        return
    text = summary_text()
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else _nullcontext():
        print("\n" + text)
    path = os.environ.get("CONVKIT_CONFORMANCE_SUMMARY")
    if path:
        with open(path, "w") as f:
            f.write(summary_markdown() + "\n")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":  # python tests/test_conformance.py [pytest args]: the Markdown table
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        md = os.path.join(tmp, "conformance.md")
        os.environ["CONVKIT_CONFORMANCE_SUMMARY"] = md
        rc = pytest.main(["-q", "-p", "no:cacheprovider", __file__] + sys.argv[1:])
        if os.path.exists(md):
            print(open(md).read())
    sys.exit(rc)
