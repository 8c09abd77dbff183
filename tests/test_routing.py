"""convkit.use(): torch's functional conv2d / relu / max-pool calls routed to convkit, with
torch's signatures and results; what convkit cannot do falls back to torch; compile and export
trace through it; convert(functional=True) and the conversion report.

"Routed" is judged by the ops that reach the dispatcher (a TorchDispatchMode count): no
aten::convolution, aten::relu / relu_ or aten::max_pool2d* op, and convkit's ops instead.
"""
import copy
import io
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from small_models import INPUT_SHAPE, DenseNetLike, GoogLeNetLike, ResNetLike
from torch.utils._python_dispatch import TorchDispatchMode

import convkit
from convkit.routing import RoutedForward

# aten ops convkit replaces, forward and backward (prefixes of the ops' names)
TORCH_OPS = ("aten.convolution", "aten._convolution", "aten.mkldnn_convolution", "aten.relu",
             "aten.threshold", "aten.max_pool2d", "aten.clamp_min")


class OpCount(TorchDispatchMode):
    """How many times each op reached the dispatcher (``aten.relu_``, ``convkit.conv2d``)."""

    def __init__(self):
        super().__init__()
        self.ops = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def torch_ops(self):
        return {k: v for k, v in self.ops.items() if k.startswith(TORCH_OPS)}

    def convkit_ops(self):
        return {k: v for k, v in self.ops.items() if k.startswith("convkit.")}


def counted(fn, *args):
    with OpCount() as count:
        out = fn(*args)
    return out, count


x4 = lambda *shape: torch.randn(*shape, dtype=torch.float64)  # noqa: E731

# (id, call): each call made once outside the mode (torch) and once inside (convkit)
CALLS = [
    ("F.conv2d", lambda x, w, b: F.conv2d(x, w)),
    ("F.conv2d-positional", lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 1)),
    ("F.conv2d-keywords", lambda x, w, b: F.conv2d(input=x, weight=w, bias=b, stride=(2, 1),
                                                   padding=(1, 0), dilation=(1, 2))),
    ("F.conv2d-same", lambda x, w, b: F.conv2d(x, w, None, 1, "same", 2)),
    ("F.conv2d-groups-unbatched", lambda x, w, b: F.conv2d(x[0], w[:, :2], b, groups=2)),
    ("torch.conv2d", lambda x, w, b: torch.conv2d(x, w, b, 1, "valid")),
    ("F.relu", lambda x, w, b: F.relu(x)),
    ("torch.relu", lambda x, w, b: torch.relu(x)),
    ("Tensor.relu", lambda x, w, b: x.relu()),
    ("F.max_pool2d", lambda x, w, b: F.max_pool2d(x, 2)),
    ("F.max_pool2d-args", lambda x, w, b: F.max_pool2d(x, (3, 2), (2, 1), 1, 1, True)),
    ("F.max_pool2d-keywords", lambda x, w, b: F.max_pool2d(x, kernel_size=3, stride=2,
                                                           padding=1, dilation=2,
                                                           ceil_mode=True)),
    ("F.max_pool2d-indices", lambda x, w, b: F.max_pool2d(x, 2, return_indices=True)),
    ("F.max_pool2d_with_indices", lambda x, w, b: F.max_pool2d_with_indices(x, 3, 1, 1)),
    ("torch.max_pool2d", lambda x, w, b: torch.max_pool2d(x, 2)),
    ("torch.max_pool2d-args", lambda x, w, b: torch.max_pool2d(x, (3, 2), (), 1, 1, True)),
    ("nn.Conv2d-reflect", lambda x, w, b: nn.Conv2d(4, 6, 3, padding=1,
                                                    padding_mode="reflect").double()(x)),
    ("nn.MaxPool2d-indices", lambda x, w, b: nn.MaxPool2d(2, return_indices=True)(x)),
]
INPLACE = [
    ("F.relu-inplace", lambda x: F.relu(x, inplace=True)),
    ("F.relu-inplace-positional", lambda x: F.relu(x, True)),
    ("F.relu_", lambda x: F.relu_(x)),
    ("torch.relu_", lambda x: torch.relu_(x)),
    ("Tensor.relu_", lambda x: x.relu_()),
    ("nn.ReLU-inplace", lambda x: nn.ReLU(inplace=True)(x)),
]


@pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[i for i, _ in CALLS])
def test_routed_call_gives_torchs_result_on_convkit(call):
    x, w, b = x4(2, 4, 9, 8), x4(6, 4, 3, 3), x4(6)
    torch.manual_seed(1)
    expected = call(x, w, b)
    torch.manual_seed(1)  # the same initial weights for the nn modules
    with convkit.use():
        got, count = counted(call, x, w, b)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert count.torch_ops() == {}, count.ops
    assert count.convkit_ops(), count.ops


@pytest.mark.parametrize("call", [c for _, c in INPLACE], ids=[i for i, _ in INPLACE])
def test_routed_inplace_relu_writes_into_its_input(call):
    x = x4(2, 3, 5, 5)
    expected = call(x.clone())
    y = x.clone()
    with convkit.use():
        out, count = counted(call, y)
    assert out is y
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert count.torch_ops() == {} and count.convkit_ops() == {"convkit.relu_": 1}, count.ops


def test_routed_calls_differentiate_as_torchs():
    def f(x, w, b):
        y = F.relu(F.conv2d(x, w, b, padding=1))
        y = F.max_pool2d(y, 2, ceil_mode=True)
        return torch.relu_(F.conv2d(y, w[:, :6].transpose(0, 1).contiguous()))

    args = [x4(2, 6, 9, 7).requires_grad_(), x4(8, 6, 3, 3).requires_grad_(),
            x4(8).requires_grad_()]
    expected = torch.autograd.grad(f(*args).square().sum(), args)
    with convkit.use(), OpCount() as count:
        got = torch.autograd.grad(f(*args).square().sum(), args)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    assert count.torch_ops() == {}, count.ops


class Tagged(torch.Tensor):
    """A subclass that wants its own __torch_function__ (results stay Tagged)."""


@pytest.mark.parametrize("case", ["integer", "mixed-dtypes", "meta", "subclass", "complex"])
def test_what_convkit_cannot_do_goes_to_torch(case):
    x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    if case == "integer":
        call, args = torch.relu, (torch.arange(-4, 4),)
    elif case == "mixed-dtypes":  # torch's own error, in torch's words
        call, args = F.conv2d, (x.double(), w)
    elif case == "meta":
        call, args = F.conv2d, (x.to("meta"), w.to("meta"))
    elif case == "subclass":
        call, args = F.max_pool2d, (x.as_subclass(Tagged), 2)
    else:
        call, args = F.relu, (torch.randn(3, dtype=torch.complex64),)
    try:
        expected = call(*args)
    except Exception as e:  # the same exception, raised by torch
        with convkit.use(), pytest.raises(type(e), match=str(e)[:40]):
            call(*args)
        return
    with convkit.use():
        got, count = counted(call, *args)
    assert type(got) is type(expected)
    if got.device.type != "meta":
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert count.convkit_ops() == {}, count.ops


def test_autocast_mixed_dtypes_are_routed():
    """Under torch.autocast a bfloat16 activation meets float32 weights: convkit casts them as
    torch's autocast does, so the call is convkit's."""
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = F.relu(F.conv2d(x, w, b))
        expected = F.conv2d(h, w[:, :1].repeat(1, 4, 1, 1))
        with convkit.use():
            got, count = counted(lambda: F.conv2d(h, w[:, :1].repeat(1, 4, 1, 1)))
    assert h.dtype == torch.bfloat16 and got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    assert count.torch_ops() == {} and "convkit.conv2d" in count.convkit_ops(), count.ops


def test_convkit_argument_errors_are_raised_in_torchs_words():
    with convkit.use(), pytest.raises((RuntimeError, ValueError), match="padding"):
        F.conv2d(torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3), stride=2, padding="same")


def test_use_takes_a_conv_algorithm():
    x, w = torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 3, 3,
                                                                     dtype=torch.float64)
    for algorithm in ("direct", "im2col"):
        with convkit.use(algorithm):
            torch.testing.assert_close(F.conv2d(x, w), torch.conv2d(x, w), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="algorithm"):
        convkit.use("winograd-9000")


@pytest.mark.parametrize("make", [GoogLeNetLike, DenseNetLike, ResNetLike],
                         ids=["googlenet-like", "densenet121-like", "resnet18-like"])
@pytest.mark.parametrize("how", ["use", "convert-functional"])
def test_network_runs_no_torch_conv_relu_or_pool_op(make, how):
    """Forward and backward of a train-mode step: every conv, ReLU (modules and F.relu calls
    alike) and max-pool is convkit's; logits and gradients are torch's."""
    torch.manual_seed(0)
    ref = make().double()
    x = x4(*INPUT_SHAPE)
    model = copy.deepcopy(ref)
    if how == "convert-functional":
        model = convkit.convert(model, functional=True)

    def step(m):
        torch.manual_seed(1)  # the same dropout
        y = m(x)
        y.square().sum().backward()
        return [y.detach()] + [p.grad for p in m.parameters()]

    expected = step(ref)
    with OpCount() as count:
        if how == "use":
            with convkit.use():
                got = step(model)
        else:
            got = step(model)
    assert count.torch_ops() == {}, count.torch_ops()
    assert {"convkit.conv2d", "convkit.relu_", "convkit.max_pool2d",
            "convkit.conv2d_backward_weight"} <= set(count.convkit_ops())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


def _recording(graphs):
    from torch._dynamo.backends.debugging import aot_eager

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)
    return backend


def _targets(graph_module):
    """The ops a traced module calls, its subgraphs' included (strict export puts convkit's ops
    in set_grad_enabled regions)."""
    return {str(n.target) for m in graph_module.modules() if isinstance(m, torch.fx.GraphModule)
            for n in m.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("where", ["mode-outside", "mode-inside"])
def test_compile_traces_through_use(where):
    torch.manual_seed(0)
    model = GoogLeNetLike().eval()
    x = torch.randn(INPUT_SHAPE)
    expected = model(x)
    if where == "mode-inside":
        model = convkit.convert(copy.deepcopy(model), functional=True)
    graphs = []
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=_recording(graphs))
    with torch.no_grad():
        if where == "mode-outside":
            with convkit.use():
                got = compiled(x)
        else:
            got = compiled(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert len(graphs) == 1
    targets = _targets(graphs[0])
    assert {"convkit.conv2d.default", "convkit.max_pool2d.default"} <= targets, targets
    # dynamo's graph names torch functions (<built-in method conv2d ...>), not aten ops
    assert not [t for t in targets if not t.startswith("convkit.")
                and any(op in t for op in ("conv", "relu", "max_pool"))], targets


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_export_traces_through_convert_functional(strict):
    torch.manual_seed(0)
    ref = GoogLeNetLike().eval()
    x = torch.randn(INPUT_SHAPE)
    model = convkit.convert(copy.deepcopy(ref), functional=True)
    program = torch.export.export(model, (x,), strict=strict)
    targets = _targets(program.graph_module)
    assert {"convkit.conv2d.default", "convkit.relu_.default", "convkit.max_pool2d.default"} \
        <= targets, targets  # the F.relu(x, inplace=True) calls, routed
    assert not any(t.startswith(TORCH_OPS) for t in targets), targets
    x2 = torch.randn(INPUT_SHAPE)
    torch.testing.assert_close(program.module()(x2), ref(x2), rtol=1e-4, atol=1e-4)


def test_convert_functional_survives_copies_and_pickles():
    torch.manual_seed(0)
    ref = GoogLeNetLike().double().eval()
    model = convkit.convert(copy.deepcopy(ref), functional=True)
    x = x4(*INPUT_SHAPE)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(other.forward, RoutedForward) and other.forward.module is other
        _, count = counted(other, x)
        assert count.torch_ops() == {}, count.ops
        torch.testing.assert_close(other(x), ref(x), rtol=1e-10, atol=1e-10)
    assert model.state_dict().keys() == ref.state_dict().keys()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert list(convkit.convert(model, functional=True).forward.__signature__.parameters) \
        == ["x"]
    assert model.forward.args[2] is None  # converting twice wraps forward once


def test_converted_module_sets_the_mode_aside_and_restores_it():
    """Converted modules call convkit themselves: under use() they run with the mode set aside
    (plain eager path) and put it back, also when they raise."""
    conv = convkit.convert(nn.Conv2d(2, 3, 3))
    modes_seen = []

    def conv2d(*args, **kwargs):
        modes_seen.append(torch._C._is_torch_function_mode_enabled())
        return convkit.functional.conv2d(*args, **kwargs)

    conv._functional = conv2d
    stack = torch._C._len_torch_function_stack
    with convkit.use():
        depth = stack()
        conv(torch.randn(1, 2, 5, 5))
        assert modes_seen == [False] and stack() == depth
        with pytest.raises(RuntimeError, match="channels"):
            conv(torch.randn(1, 5, 5, 5))
        assert stack() == depth
    assert stack() == 0


class SubConv(nn.Conv2d):
    pass


def test_conversion_report_says_what_was_swapped_and_what_was_left():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ReLU6(), SubConv(4, 4, 1),
                          nn.AvgPool2d(2), nn.MaxPool2d(2), nn.ConvTranspose2d(4, 4, 2),
                          nn.BatchNorm2d(4))
    before = convkit.conversion_report(model)
    assert [(n, c) for n, c, _ in before.torch][:2] == [("0", "Conv2d"), ("1", "ReLU")]
    convkit.convert(model)
    report = convkit.conversion_report(model)
    assert report.convkit == [("0", "Conv2d"), ("1", "ReLU"), ("5", "MaxPool2d")]
    reasons = {n: r for n, _, r in report.torch}
    assert set(reasons) == {"2", "3", "4", "6"}  # BatchNorm2d is not of convkit's kinds
    assert "activation convkit does not implement" in reasons["2"]
    assert "subclass of nn.Conv2d" in reasons["3"] and "routed" not in reasons["3"]
    assert "pool convkit does not implement" in reasons["4"]
    assert "convolution convkit does not implement" in reasons["6"]
    assert not report.functional and "stay on torch" in str(report)
    routed = convkit.conversion_report(convkit.convert(model, functional=True))
    assert routed.functional and "routed" in dict((n, r) for n, _, r in routed.torch)["3"]


def test_convert_report_prints_the_table(capsys):
    convkit.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 1)),
                    report=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("convkit: 2 modules on convkit, 1 convolution/activation/pool modules "
                      "left on torch")
    assert out[1].split()[:4] == ["convkit", "Conv2d", "x2", "0,"]
    assert out[2].split()[:4] == ["torch", "GELU", "x1", "1"]


def test_importing_convkit_and_naming_use_change_nothing():
    code = ("import sys, convkit; assert 'torch' not in sys.modules; import torch; "
            "convkit.use; convkit.convert; "
            "assert not torch._C._is_torch_function_mode_enabled(); "
            "assert torch._C._len_torch_function_stack() == 0")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet", "densenet121"])
def test_torchvision_models_run_no_torch_conv_relu_or_pool_op(name):
    models = pytest.importorskip("torchvision").models
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    ref = getattr(models, name)(weights=None, num_classes=10, **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    model = convkit.convert(copy.deepcopy(ref), functional=True)
    with torch.no_grad():
        got, count = counted(model, x)
        torch.testing.assert_close(got, ref(x), rtol=1e-3, atol=1e-3)
    assert count.torch_ops() == {}, count.torch_ops()
    with torch.no_grad(), convkit.use():
        _, count = counted(ref, x)
    assert count.torch_ops() == {}, count.torch_ops()
