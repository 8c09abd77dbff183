"""convkit.nn modules against torch.nn: constructor, repr, state_dict both ways, convert(),
every padding_mode, and the symmetric mode against numpy's pad."""
import numpy as np
import pytest
import torch
from torch import nn

import convkit
import convkit.functional as CF
from convkit import nn as cnn


def _pair_of_convs(**kw):
    torch.manual_seed(1)
    ref = nn.Conv2d(**kw)
    torch.manual_seed(1)
    ours = cnn.Conv2d(**kw)
    return ref, ours


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [0, 1, (2, 1), "same", "valid"])
def test_conv2d_module_matches_torch(padding_mode, padding):
    kw = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=1, padding=padding,
              dilation=(1, 2), groups=2, bias=True, padding_mode=padding_mode)
    ref, ours = _pair_of_convs(**kw)
    assert repr(ref) == repr(ours)
    assert torch.equal(ref.weight, ours.weight) and torch.equal(ref.bias, ours.bias)
    x = torch.randn(2, 4, 9, 8)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yo = ref(xr), ours(xo)
    torch.testing.assert_close(yo, yr, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(yr)
    yr.backward(g)
    yo.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-4)


def test_state_dict_round_trip():
    ref = nn.Conv2d(3, 5, 3, padding=1)
    ours = cnn.Conv2d(3, 5, 3, padding=1)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    back = nn.Conv2d(3, 5, 3, padding=1)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(back.weight, ref.weight)
    for m_ref, m_ours in ((nn.ReLU(), cnn.ReLU()), (nn.MaxPool2d(2), cnn.MaxPool2d(2))):
        assert m_ref.state_dict().keys() == m_ours.state_dict().keys()
        assert repr(m_ref) == repr(m_ours)


def test_conv2d_symmetric_padding_matches_numpy():
    conv = cnn.Conv2d(1, 1, 3, padding=1, padding_mode="symmetric", bias=False)
    x = torch.randn(1, 1, 6, 5, dtype=torch.float64)
    conv = conv.double()
    padded = np.pad(x[0, 0].numpy(), 1, mode="symmetric")
    k = conv.weight.detach()[0, 0].numpy()
    expected = np.array([[np.sum(padded[i:i + 3, j:j + 3] * k) for j in range(5)]
                         for i in range(6)])
    np.testing.assert_allclose(conv(x)[0, 0].detach().numpy(), expected, atol=1e-12)
    assert "padding_mode=symmetric" in repr(conv)


@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (3, 0, 2, 5), (0, 7, 9, 1)])
def test_symmetric_pad_any_width_matches_numpy(pads):
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    left, right, top, bottom = pads
    y = CF.pad(x, pads, mode="symmetric")
    ref = np.pad(x.detach().numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)),
                 mode="symmetric")
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    assert torch.autograd.gradcheck(lambda t: CF.pad(t, pads, mode="symmetric"), (x,))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1,
                                                                 padding_mode="reflect"),
                                      nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_convert_keeps_weights_and_outputs():
    torch.manual_seed(3)
    ref = _Net()
    model = _Net()
    model.load_state_dict(ref.state_dict())
    params_before = list(model.parameters())
    out = convkit.convert(model)
    assert out is model
    kinds = [type(m) for m in model.modules()]
    assert nn.Conv2d not in kinds and nn.ReLU not in kinds and nn.MaxPool2d not in kinds
    assert kinds.count(cnn.Conv2d) == 2 and kinds.count(cnn.MaxPool2d) == 2
    assert all(a is b for a, b in zip(params_before, model.parameters()))
    assert model.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 1, 14, 14)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)
    model(x).sum().backward()
    ref(x).sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4)


def test_convert_a_bare_layer_and_algorithm():
    conv = nn.Conv2d(2, 3, 3)
    new = convkit.convert(conv, algorithm="im2col")
    assert isinstance(new, cnn.Conv2d) and new.weight is conv.weight
    assert "algorithm='im2col'" in repr(new)
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(new(x), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv2d_relu_fused_matches_torch(algorithm):
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    b = torch.randn(16, dtype=torch.float64)
    y = CF.conv2d_relu(x, w, b, padding=1, algorithm=algorithm)
    torch.testing.assert_close(y, torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1)))
    xs = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bs = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: CF.conv2d_relu(x, w, b, 1, 1, algorithm=algorithm), (xs, ws, bs))


def test_convert_fuse_relu_in_sequential():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="replicate"), nn.ReLU())
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    keys = set(model.state_dict())
    model = convkit.convert(model, fuse_relu=True)
    assert [type(m) for m in model] == [cnn.Conv2dReLU, nn.Identity, cnn.MaxPool2d,
                                        cnn.Conv2dReLU, nn.Identity]
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert set(model.state_dict()) == keys


# every kernel the fused epilogue lives in: direct shifted-plane (stride 1, <= 4 channels per
# group), direct channel-inner (>= 8 output channels per group), direct plane (depthwise,
# strided), im2col (both pipelines: cblas workers and numpy.matmul, chosen by
# CONVKIT_IM2COL_PIPELINE)
FUSED_CASES = [
    ((2, 1, 9, 8), (8, 1, 3, 3), dict(padding=1)),
    ((2, 6, 9, 8), (16, 6, 3, 2), dict(stride=(2, 1), padding=(1, 0))),
    ((2, 4, 9, 9), (4, 1, 3, 3), dict(stride=2, padding=1, groups=4)),
    ((1, 3, 7, 7), (5, 3, 2, 2), dict(dilation=2)),
]


@pytest.mark.parametrize("pipeline", ["cblas", "numpy"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", range(len(FUSED_CASES)))
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_conv2d_relu_epilogue_in_every_kernel(algorithm, case, bias, pipeline, monkeypatch):
    """The fused ReLU equals relu(conv2d) of the same algorithm bit for bit, NaN and -0.0
    included, and torch's relu(conv2d) to rounding."""
    from convkit.kernels.cpu.conv_im2col import PIPELINE_ENV, cblas_workers

    if algorithm == "direct" and pipeline == "numpy":
        pytest.skip("the pipelines are im2col's")
    if pipeline == "cblas" and not cblas_workers.available(np.float32):
        pytest.skip("numpy's BLAS has no ILP64 OpenBLAS cblas here")
    monkeypatch.setenv(PIPELINE_ENV, pipeline)
    xshape, wshape, kwargs = FUSED_CASES[case]
    torch.manual_seed(case)
    x = torch.randn(xshape)
    x[0, 0, 2, 3] = float("nan")  # a NaN output must stay NaN through the epilogue
    x[-1, -1, 0, 0] = float("inf")  # and an infinite first output must not spoil its row
    w = torch.randn(wshape)
    b = torch.randn(wshape[0]) if bias else None
    y = CF.conv2d_relu(x, w, b, **kwargs, algorithm=algorithm)
    unfused = CF.relu(CF.conv2d(x, w, b, **kwargs, algorithm=algorithm))
    assert torch.equal(y.isnan(), unfused.isnan()) and y.isnan().any()
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(unfused))
    assert torch.equal(torch.signbit(y), torch.signbit(unfused))  # -0.0 kept, as relu
    ref = torch.relu(torch.nn.functional.conv2d(x, w, b, **kwargs))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5, equal_nan=True)
