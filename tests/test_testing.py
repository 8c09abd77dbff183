"""convkit.testing: the one-call check passes on convkit's layers and reports each kind of
failure it exists to catch (wrong values, wrong gradients, a broken op registration); the pytest
helpers; and docs/pytorch-integration.md's examples, run as written."""
import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import convkit
from convkit import testing
from convkit.testing import convkit_check  # noqa: F401  (the fixture, for the test below)

INTEGRATION = Path(__file__).resolve().parents[1] / "docs" / "pytorch-integration.md"


def small_pair():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                        nn.Conv2d(4, 2, 2, stride=2, groups=2))
    return convkit.convert(copy.deepcopy(ref)), ref


def test_check_passes_on_a_converted_model_and_reports_every_check():
    mine, ref = small_pair()
    report = testing.check(mine, ref, shapes=[(2, 2, 5, 6), (1, 2, 4, 4)],
                           dtypes=[torch.float32, torch.float64], grad_shapes=[(1, 2, 4, 3)],
                           opchecks_per_op=1)
    assert report.ok, str(report)
    kinds = [r.check for r in report.results]
    assert kinds.count("parity") == 4
    assert kinds.count("gradcheck") == kinds.count("gradgradcheck") == 1
    checked_ops = {r.case.split("(")[0] for r in report.results if r.check == "opcheck"}
    assert checked_ops == {"convkit::conv2d", "convkit::relu", "convkit::max_pool2d",
                           "convkit::conv2d_backward_input", "convkit::conv2d_backward_weight",
                           "convkit::conv2d_backward_bias", "convkit::relu_backward",
                           "convkit::max_pool2d_backward"}
    text = str(report)
    assert text.startswith(f"{report.name}: {len(report.results)} passed, 0 failed")
    assert "parity         (2x2x5x6) float32" in text


def test_a_wrong_forward_fails_parity_with_the_difference():
    class Off(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = convkit.nn.Conv2d(2, 3, 3)

        def forward(self, x):
            return self.conv(x) * 1.01

    mine = Off()
    ref = nn.Conv2d(2, 3, 3)
    ref.load_state_dict(mine.conv.state_dict())
    report = testing.check(mine, ref, shapes=[(1, 2, 5, 5)], gradcheck=False,
                           gradgradcheck=False, opcheck=False)
    assert not report.ok and [r.check for r in report.failures] == ["parity"]
    message = report.failures[0].message
    assert message.startswith("output: Tensor-likes are not close!")
    assert "grad of conv.weight" in message  # the gradients are off by the same factor
    with pytest.raises(AssertionError, match=r"0 passed, 1 failed\n  FAILED parity"):
        report.raise_if_failed()


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``s``."""

    @staticmethod
    def forward(ctx, w, s):
        ctx.s = s
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.s, None


class _WeightGradientOff(convkit.nn.Conv2d):
    """convkit's Conv2d whose weight gradient is ``s`` times the true one."""

    s = 1.0

    def forward(self, x):
        w = _ScaleGradient.apply(self.weight, self.s)
        return convkit.functional.conv2d(x, w, self.bias, padding=self.padding)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_a_weight_gradient_5_percent_off_fails_parity_in_every_dtype(dtype):
    # float16/bfloat16 are judged against the float32 computation rounded once (gradients used
    # to get 10x a loose reduced-precision tolerance: x1.05 passed in float16, x1.3 in bfloat16)
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 4, 3, padding=1)
    mine = _WeightGradientOff(3, 4, 3, padding=1)
    mine.load_state_dict(ref.state_dict())
    kwargs = dict(dtypes=[dtype], gradcheck=False, gradgradcheck=False, opcheck=False)
    assert testing.check(mine, ref, [(2, 3, 8, 8)], **kwargs).ok
    mine.s = 1.05
    report = testing.check(mine, ref, [(2, 3, 8, 8)], **kwargs)
    assert [r.check for r in report.failures] == ["parity"]
    assert report.failures[0].message.startswith("grad of weight")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_model_passes_against_the_float32_computation(dtype):
    mine, ref = small_pair()
    report = testing.check(mine, ref, shapes=[(2, 2, 5, 6), (1, 2, 4, 4)], dtypes=[dtype],
                           gradcheck=False, gradgradcheck=False, opcheck=False)
    assert report.ok, str(report)
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    y = convkit.functional.conv2d(x.to(dtype), w.to(dtype))
    testing.assert_close_rounded(y, torch.nn.functional.conv2d(x.to(dtype).float(),
                                                               w.to(dtype).float()))
    with pytest.raises(AssertionError, match="rounded once"):
        testing.assert_close_rounded(y * 1.05, torch.nn.functional.conv2d(
            x.to(dtype).float(), w.to(dtype).float()))


class WrongGradient(torch.autograd.Function):
    """relu whose backward forgets the mask: forward right, gradient wrong."""

    @staticmethod
    def forward(x):
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, gy):
        return gy


def test_a_wrong_backward_fails_gradcheck():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    report = testing.check(WrongGradient.apply, shapes=[(2, 3, 4, 4)], opcheck=False,
                           gradgradcheck=False, inputs=lambda s, d, dev: (x.to(d),))
    assert [r.check for r in report.failures] == ["gradcheck"]
    assert "Jacobian mismatch" in report.failures[0].message


_BROKEN = torch.library.Library("convkit_testing_broken", "DEF")
_BROKEN.define("halve(Tensor x) -> Tensor")
_BROKEN.impl("halve", lambda x: x[..., ::2].clone(), "CPU")
torch.library.register_fake("convkit_testing_broken::halve",
                            lambda x: x.new_empty(x.shape), lib=_BROKEN)  # wrong size


@pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered")
def test_a_broken_op_registration_fails_opcheck():
    def fn(x):
        return torch.ops.convkit_testing_broken.halve(x)

    report = testing.check(fn, shapes=[(2, 4)], gradcheck=False, gradgradcheck=False,
                           namespaces=("convkit_testing_broken",))
    failures = [r for r in report.failures if r.check == "opcheck"]
    assert len(failures) == 1 and "test_faketensor" in failures[0].message
    assert failures[0].case == "convkit_testing_broken::halve(2x4:float32)"


def test_check_op_on_one_argument_set():
    x, w = torch.randn(1, 2, 6, 6), torch.randn(4, 1, 3, 3)
    report = testing.check_op(torch.ops.convkit.conv2d.default,
                              (x, w, None, [2, 1], [1, 1], [1, 2], 2, "im2col"))
    assert report.ok, str(report)
    assert report.results[0].case.startswith("convkit::conv2d(1x2x6x6:float32, 4x1x3x3:float32")


@testing.parametrize([(1, 3, 5, 5), (2, 3, 4, 6)], [torch.float32, torch.float64])
def test_parametrize_gives_one_test_per_case(shape, dtype, request):
    assert request.node.callspec.id in {"1x3x5x5-float32", "1x3x5x5-float64",
                                        "2x3x4x6-float32", "2x3x4x6-float64"}
    report = testing.check(convkit.nn.ReLU(), nn.ReLU(), [shape], dtypes=[dtype],
                           gradcheck=False, gradgradcheck=False, opcheck=False)
    assert report.ok


def test_fixture_runs_check_and_returns_the_report(convkit_check):  # noqa: F811
    report = convkit_check(convkit.nn.MaxPool2d(2), nn.MaxPool2d(2), [(1, 2, 4, 4)],
                           inputs=lambda s, d, dev: (torch.randperm(32).view(s).to(d),),
                           opchecks_per_op=1)
    assert report.ok


def readme_examples():
    return re.findall(r"```python\n(.*?)```", INTEGRATION.read_text(), re.S)


def test_readme_pytorch_integration_examples_run(capsys):
    """The section's examples, in order, in one namespace: compile (Inductor), export, func,
    autocast, opcheck and convkit.testing."""
    blocks = readme_examples()
    assert len(blocks) == 6
    torch._dynamo.reset()
    namespace = {}
    for block in blocks:
        exec(compile(block, str(INTEGRATION), "exec"), namespace)
    assert "0 failed" in capsys.readouterr().out
