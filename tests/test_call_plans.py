"""The per-call plans of convkit.functional: a conv2d / max_pool2d call whose shapes, dtypes and
arguments were validated once skips the checks the next time. Remembering must never change a
result or an error: each case below is run twice (first call validates, second call uses the
plan) and compared with torch, including arguments equal to a remembered one but of another type
(1.0 == 1 and True == 1 in Python, and hash alike), which must still raise as torch does."""
import pytest
import torch
import torch.nn.functional as F

import convkit.functional as CF


def _raises_like_torch(convkit_call, torch_call):
    with pytest.raises(Exception) as theirs:
        torch_call()
    with pytest.raises(type(theirs.value)):
        convkit_call()


@pytest.mark.parametrize("bad", [dict(stride=1.0), dict(padding=1.0), dict(dilation=1.0),
                                 dict(stride=(1.0, 1)), dict(groups=1.0)])
def test_conv2d_arguments_of_another_type_still_refused(bad):
    torch.manual_seed(0)
    x, w = torch.randn(2, 4, 8, 8), torch.randn(4, 4, 3, 3)
    good = dict(stride=1, padding=1, dilation=1, groups=1)
    for _ in range(2):  # remembered after the first call
        torch.testing.assert_close(CF.conv2d(x, w, **good), F.conv2d(x, w, **good))
    args = {**good, **bad}
    _raises_like_torch(lambda: CF.conv2d(x, w, **args), lambda: F.conv2d(x, w, **args))


@pytest.mark.parametrize("kwargs", [dict(padding="same"), dict(padding="valid"),
                                    dict(padding=(1, 2), stride=(2, 1)), dict(dilation=2)])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 4)])
@pytest.mark.parametrize("unbatched", [False, True])
def test_conv2d_remembered_calls_match_torch(kwargs, kernel, unbatched):
    torch.manual_seed(0)
    x = torch.randn(*((3, 9, 10) if unbatched else (2, 3, 9, 10)), dtype=torch.float64)
    w = torch.randn(4, 3, *kernel, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    if kwargs.get("padding") == "same" and kwargs.get("stride", 1) != 1:
        pytest.skip("torch refuses 'same' with stride")
    expected = F.conv2d(x, w, b, **kwargs)
    for _ in range(3):
        torch.testing.assert_close(CF.conv2d(x, w, b, **kwargs), expected)
        torch.testing.assert_close(CF.conv2d(x, w, None, **kwargs), F.conv2d(x, w, None, **kwargs))


def test_conv2d_shape_change_is_validated_again():
    x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3)
    CF.conv2d(x, w, padding=1)
    x_bad = torch.randn(1, 5, 8, 8)  # wrong channel count: a new key, checked again
    _raises_like_torch(lambda: CF.conv2d(x_bad, w, padding=1),
                       lambda: F.conv2d(x_bad, w, padding=1))
    w64 = w.double()  # another dtype: a new key, checked again
    _raises_like_torch(lambda: CF.conv2d(x, w64, padding=1), lambda: F.conv2d(x, w64, padding=1))


@pytest.mark.parametrize("bad", [dict(kernel_size=2.0), dict(stride=2.0), dict(padding=True),
                                 dict(kernel_size=(2, 2.0)), dict(ceil_mode=1)])
def test_max_pool2d_arguments_of_another_type_still_refused(bad):
    x = torch.randn(1, 2, 6, 6)
    good = dict(kernel_size=2, stride=2, padding=1)
    for _ in range(2):
        torch.testing.assert_close(CF.max_pool2d(x, **good), F.max_pool2d(x, **good))
    args = {**good, **bad}
    _raises_like_torch(lambda: CF.max_pool2d(x, **args), lambda: F.max_pool2d(x, **args))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=(2, 3), ceil_mode=True),
                                    dict(kernel_size=2, dilation=2)])
@pytest.mark.parametrize("unbatched", [False, True])
def test_max_pool2d_remembered_calls_match_torch(kwargs, unbatched):
    torch.manual_seed(0)
    x = torch.randn(*((3, 9, 11) if unbatched else (2, 3, 9, 11)))
    y, i = F.max_pool2d(x, return_indices=True, **kwargs)
    for _ in range(3):
        cy, ci = CF.max_pool2d(x, return_indices=True, **kwargs)
        torch.testing.assert_close(cy, y)
        assert torch.equal(ci, i)


def test_plans_are_bounded():
    x = torch.randn(1, 1, 4, 4)
    for n in range(CF._MAX_PLANS + 10):
        CF.max_pool2d(x, kernel_size=1, stride=1 + n % 3, padding=0, dilation=1 + n)
    assert len(CF._POOL_PLANS) <= CF._MAX_PLANS


def test_functorch_wrapper_outliving_its_transform_matches_torch():
    """A tensor leaked out of torch.func.grad is still a (dead) functorch wrapper; the eager
    Functions are applied through torch's Function.apply for it (which unwraps it), not the
    C++ apply the plain-tensor fast path uses: results and gradients as torch's."""
    leaked = []

    def f(x):
        leaked.append(x)
        return (x * x).sum()

    torch.func.grad(f)(torch.randn(1, 2, 5, 5))
    dead = leaked[0]
    assert torch._C._functorch.is_functorch_wrapped_tensor(dead)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    y, ref = CF.conv2d(dead, w, padding=1), F.conv2d(dead, w, padding=1)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), w)[0],
                               torch.autograd.grad(ref.sum(), w)[0])
    torch.testing.assert_close(CF.max_pool2d(dead, 2), F.max_pool2d(dead, 2))
