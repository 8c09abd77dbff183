"""torch.ops.convkit.*: registration, fake implementations, opcheck, vmap rules, argument checks.

opcheck (schema, autograd registration, fake tensor, AOT dispatch with dynamic shapes) runs on
argument sets drawn from the parity suites' ranges (batch 1-4, channels 1-8, sizes 1-17, kernels
1-5, stride 1-3, padding 0-2, dilation 1-2, groups 1 / 2 / depthwise, bias on/off, both
algorithms, four dtypes, contiguous / channels-last / strided inputs); a larger grid checks the
fake implementations' sizes, strides and dtypes against the real results directly.
"""
import random
import subprocess
import sys

import pytest
import torch
from conftest import draw_conv_geometry
from torch._subclasses.fake_tensor import FakeTensorMode

import convkit.functional as CF
from convkit import testing
from convkit.autograd import ops
from convkit.kernels.shapes import ArgumentError, DtypeError

OPS = torch.ops.convkit


def _tensor(shape, dtype, layout="contiguous"):
    if layout == "transposed":  # a strided, non-dense-in-order view
        return torch.randn(*shape[:-2], shape[-1], shape[-2]).to(dtype).transpose(-1, -2)
    x = torch.randn(shape).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _conv_cases(n, seed):
    """Valid conv arguments from the parity suites' ranges."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        N, C, H, W, K, G, KH, KW = draw_conv_geometry(rng)
        stride = [rng.randint(1, 3), rng.randint(1, 3)]
        padding = [rng.randint(0, 2), rng.randint(0, 2)]
        dilation = [rng.randint(1, 2), rng.randint(1, 2)]
        if H + 2 * padding[0] < dilation[0] * (KH - 1) + 1 or \
                W + 2 * padding[1] < dilation[1] * (KW - 1) + 1:
            continue
        cases.append(dict(x=(N, C, H, W), w=(K, C // G, KH, KW), bias=rng.random() < 0.6,
                          conf=(stride, padding, dilation, G),
                          algorithm=rng.choice(["auto", "direct", "im2col"]),
                          dtype=rng.choice([torch.float32, torch.float64] * 3
                                           + [torch.float16, torch.bfloat16]),
                          layout=rng.choice(["contiguous", "contiguous", "channels_last",
                                             "transposed"]),
                          relu=rng.random() < 0.3))
    return cases


def _conv_calls(case):
    """(op, args) of a forward and its three backward ops for one conv case."""
    dtype = case["dtype"]
    x = _tensor(case["x"], dtype, case["layout"])
    w = _tensor(case["w"], dtype)
    b = torch.randn(case["w"][0]).to(dtype) if case["bias"] else None
    conf = (*case["conf"], case["algorithm"])
    forward = OPS.conv2d_relu.default if case["relu"] else OPS.conv2d.default
    y = forward(x, w, b, *conf)
    gy = torch.randn(y.shape).to(dtype)
    return [(forward, (x, w, b, *conf)),
            (OPS.conv2d_backward_input.default, (gy, w, list(x.shape), *conf)),
            (OPS.conv2d_backward_weight.default, (x, gy, list(w.shape), *conf)),
            (OPS.conv2d_backward_bias.default, (gy,))]


POOL_CASES = [  # (input shape, kernel, stride, padding, dilation, ceil_mode, layout)
    ((2, 3, 7, 8), [2, 2], [2, 2], [0, 0], [1, 1], False, "contiguous"),
    ((1, 2, 9, 7), [3, 2], [2, 1], [1, 1], [1, 2], True, "channels_last"),
    ((2, 1, 5, 6), [3, 3], [3, 3], [1, 0], [2, 1], True, "transposed"),
    ((3, 2, 4, 4), [1, 4], [1, 2], [0, 2], [1, 1], False, "contiguous"),
]


def _pool_calls(case, dtype):
    shape, *args, layout = case
    x = _tensor(shape, dtype, layout)
    y, indices = OPS.max_pool2d.default(x, *args)
    gy = torch.randn(y.shape).to(dtype)
    return [(OPS.max_pool2d.default, (x, *args)),
            (OPS.max_pool2d_backward.default, (gy, indices, list(shape)))]


RELU_SHAPES = [(), (7,), (2, 3, 4), (0, 3), (2, 3, 5, 6)]


def _relu_calls(shape, dtype):
    x = torch.randn(shape).to(dtype)
    if x.numel() > 2:  # (no NaN: opcheck compares results without equal_nan)
        x.view(-1)[:2] = torch.tensor([-0.0, float("-inf")])
    return [(OPS.relu.default, (x,)), (OPS.relu_.default, (x.clone(),)),
            (OPS.relu_backward.default, (torch.randn(shape).to(dtype), OPS.relu(x)))]


def test_every_op_is_registered_for_cpu_cuda_meta_and_autograd():
    for name in ops.op_names():
        for key in ("CPU", "CUDA", "Meta"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), (name, key)
        # relu_ mutates its input: no autograd formula (functional.relu(inplace=True) is a
        # Function with mark_dirty instead)
        has_autograd = torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd")
        assert has_autograd == (name != "convkit::relu_"), name


def test_importing_registers_the_ops_and_changes_nothing_else():
    code = ("import sys, torch, convkit.nn\n"
            "assert torch.ops.convkit.conv2d.default is not None\n"
            "assert 'numba' not in sys.modules, 'numba imported'\n"
            "assert torch.get_num_threads() == int(sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, str(torch.get_num_threads())], check=True)


@pytest.mark.parametrize("case", _conv_cases(6, seed=14), ids=lambda c: f"{c['x']}-{c['w']}")
def test_conv_ops_pass_opcheck(case):
    report = testing.Report("conv ops")
    for op, args in _conv_calls(case):
        testing.check_op(op, args, report=report)
    report.raise_if_failed()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_pool_and_relu_ops_pass_opcheck(dtype):
    report = testing.Report("pool and relu ops")
    calls = [c for case in POOL_CASES[:2] for c in _pool_calls(case, dtype)]
    calls += [c for shape in RELU_SHAPES[1:4:2] for c in _relu_calls(shape, dtype)]
    for op, args in calls:
        testing.check_op(op, args, report=report)
    report.raise_if_failed()


def _metadata(t):
    # the strides of an empty tensor mean nothing (torch's own results of size 0 vary)
    return (tuple(t.shape), tuple(t.stride()) if t.numel() else None, t.dtype)


def _assert_fake_matches_real(op, args):
    real = op(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = op(*fake_args)
    for r, f in zip(real if isinstance(real, tuple) else (real,),
                    fake if isinstance(fake, tuple) else (fake,)):
        assert _metadata(f) == _metadata(r), op


@pytest.mark.parametrize("seed", range(4))
def test_fake_results_have_the_real_sizes_strides_and_dtypes(seed):
    for case in _conv_cases(12, seed=100 + seed):
        for op, args in _conv_calls(case):
            _assert_fake_matches_real(op, args)
    dtype = [torch.float32, torch.float64, torch.float16, torch.bfloat16][seed]
    for case in POOL_CASES:
        for op, args in _pool_calls(case, dtype):
            _assert_fake_matches_real(op, args)
    for shape in RELU_SHAPES:
        for op, args in _relu_calls(shape, dtype):
            if op is not OPS.relu_.default:
                _assert_fake_matches_real(op, args)


def test_cuda_ops_trace_with_fake_cuda_tensors():
    """No GPU here: the CUDA registrations are exercised through their fake implementations
    (FakeTensorMode makes cuda tensors without a device), forward and backward ops."""
    with FakeTensorMode():
        x = torch.empty(2, 3, 9, 8, device="cuda")
        w = torch.empty(4, 3, 3, 3, device="cuda")
        y, indices = CF.max_pool2d(CF.relu(CF.conv2d(x, w, padding=1)), 2, ceil_mode=True,
                                   return_indices=True)
        assert (y.shape, y.device.type, indices.dtype) == ((2, 4, 5, 4), "cuda", torch.int64)
        gy = torch.empty(2, 4, 9, 8, device="cuda")
        gx = OPS.conv2d_backward_input(gy, w, [2, 3, 9, 8], [1, 1], [1, 1], [1, 1], 1, "auto")
        gw = OPS.conv2d_backward_weight(x, gy, [4, 3, 3, 3], [1, 1], [1, 1], [1, 1], 1, "im2col")
        assert (gx.shape, gx.device.type) == ((2, 3, 9, 8), "cuda")
        assert (gw.shape, gw.device.type) == ((4, 3, 3, 3), "cuda")


def test_direct_op_calls_are_differentiable_twice():
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        y = OPS.conv2d_relu(x, w, b, [2, 1], [1, 0], [1, 2], 2, "direct")
        return OPS.max_pool2d(y, [2, 2], [1, 1], [1, 1], [1, 1], True)[0]

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_eager_fast_path_and_dispatcher_give_the_same_bits():
    """Plain eager calls skip the dispatcher; under a dispatch mode they go through it."""
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)

    def run():
        y = CF.max_pool2d(CF.relu(CF.conv2d(x, w, stride=2, padding=1)), 2, ceil_mode=True)
        gx, gw = torch.autograd.grad(y.sum(), (x, w))
        return y, gx, gw

    plain = run()
    recorder = testing.OpRecorder()
    with recorder:
        dispatched = run()
    assert {key[0] for key in recorder.calls} == {
        "convkit::conv2d", "convkit::relu", "convkit::max_pool2d", "convkit::max_pool2d_backward",
        "convkit::relu_backward", "convkit::conv2d_backward_input",
        "convkit::conv2d_backward_weight"}
    for a, b in zip(plain, dispatched):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dims", [(0, None, None), (None, 0, 0), (1, 0, None), (0, 1, 0)])
@pytest.mark.parametrize("name", ["conv2d", "conv2d_relu"])
def test_conv_vmap_rule_matches_a_loop(name, dims):
    """A batch of images, of filters (an ensemble), or both: one call, the loop's results."""
    B, conf = 3, ([2, 1], [1, 2], [1, 1], 2, "auto")
    op = getattr(OPS, name).default
    shapes = {0: (2, 4, 7, 6), 1: (6, 2, 3, 3), 2: (6,)}
    args = []
    for i, d in enumerate(dims):
        t = torch.randn(shapes[i], dtype=torch.float64)
        args.append(t if d is None else torch.stack([torch.randn_like(t) for _ in range(B)], d))
    got = torch.vmap(lambda x, w, b: op(x, w, b, *conf), in_dims=dims)(*args)
    pick = [(lambda t, i: t) if d is None else (lambda t, i, d=d: t.select(d, i)) for d in dims]
    want = torch.stack([op(*(p(t, i) for p, t in zip(pick, args)), *conf) for i in range(B)])
    torch.testing.assert_close(got, want)


def test_backward_and_pool_vmap_rules_match_a_loop():
    B, conf = 3, ([1, 2], [1, 0], [2, 1], 2, "direct")
    x = torch.randn(B, 2, 4, 8, 7, dtype=torch.float64)
    w = torch.randn(B, 6, 2, 3, 2, dtype=torch.float64)
    y = torch.stack([OPS.conv2d(x[i], w[i], None, *conf) for i in range(B)])
    gy = torch.randn_like(y)
    xs = list(x[0].shape)

    def loop(f, *batched):
        return torch.stack([f(*(t[i] for t in batched)) for i in range(B)])

    cases = [
        (lambda gy, w: OPS.conv2d_backward_input(gy, w, xs, *conf), (gy, w), (0, 0)),
        (lambda gy: OPS.conv2d_backward_input(gy, w[0], xs, *conf), (gy,), (0,)),
        (lambda x, gy: OPS.conv2d_backward_weight(x, gy, list(w[0].shape), *conf), (x, gy),
         (0, 0)),
        (lambda gy: OPS.conv2d_backward_bias(gy), (gy,), (0,)),
        (lambda a: OPS.relu(a), (y,), (0,)),
        (lambda g, a: OPS.relu_backward(g, a), (gy, y), (0, 0)),
        (lambda a: OPS.max_pool2d(a, [2, 2], [2, 1], [1, 0], [1, 1], True)[0], (y,), (0,)),
    ]
    for f, batched, dims in cases:
        torch.testing.assert_close(torch.vmap(f, in_dims=dims)(*batched), loop(f, *batched))
    pooled = [OPS.max_pool2d(y[i], [2, 2], [2, 1], [1, 0], [1, 1], True) for i in range(B)]
    idx = torch.stack([p[1] for p in pooled])
    gp = torch.randn(idx.shape, dtype=torch.float64)

    def unpool(g, i):
        return OPS.max_pool2d_backward(g, i, list(y[0].shape))

    torch.testing.assert_close(torch.vmap(unpool)(gp, idx), loop(unpool, gp, idx))


def test_dispatched_calls_check_their_arguments():
    x, w = torch.randn(2, 4, 7, 6), torch.randn(6, 2, 3, 2)
    conf = ([2, 1], [1, 0], [1, 2], 2, "direct")
    with pytest.raises(ArgumentError, match="expected grad_output of size"):
        OPS.conv2d_backward_input(torch.randn(2, 6, 4, 5), w, [2, 4, 7, 6], *conf)
    with pytest.raises(ArgumentError, match="expected grad_output of size"):
        OPS.conv2d_backward_weight(x, torch.randn(2, 6, 3, 4), [6, 2, 3, 2], *conf)
    with pytest.raises(ArgumentError, match="channels"):
        OPS.conv2d(x, torch.randn(6, 3, 3, 2), None, *conf)
    with pytest.raises(ArgumentError, match="algorithm"):
        OPS.conv2d(x, w, None, *conf[:4], "winograd")
    with pytest.raises(DtypeError, match="dtype"):
        OPS.conv2d(x, w.double(), None, *conf)
    with pytest.raises(ArgumentError, match="pad should be at most half"):
        OPS.max_pool2d(x, [2, 2], [2, 2], [2, 0], [1, 1], False)
    y, idx = OPS.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(TypeError, match="int64"):
        OPS.max_pool2d_backward(y, idx.int(), [2, 4, 7, 6])
    with pytest.raises(ArgumentError, match="input_size"):
        OPS.max_pool2d_backward(y, idx, [2, 5, 7, 6])
    with pytest.raises(ArgumentError, match="result of size"):
        OPS.relu_backward(y, x)


def test_in_place_relu_without_grad_still_guards_saved_tensors():
    """relu_ written by the kernel bumps the version counter, as torch's in-place ops do, so a
    tensor saved for backward and then changed in place is refused, not silently wrong."""
    x = torch.randn(2, 3, 5, 5)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    y = CF.conv2d(x, w)  # saves x for the weight gradient
    with torch.no_grad():
        CF.relu(x, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
