"""torch.autocast: convkit's conv follows torch's policy for conv2d (a lower-precision op: float32,
float16 and bfloat16 tensors are cast to the autocast dtype, float64 ones are not; the result is
in that dtype), computed as convkit's float16 / bfloat16 path does (float32 inside, rounded
once); relu and max_pool2d keep their input's dtype, as torch's do."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import convkit
import convkit.functional as CF

DTYPES = [torch.bfloat16, torch.float16]
TOL = {torch.bfloat16: dict(atol=5e-2, rtol=2e-2), torch.float16: dict(atol=5e-3, rtol=2e-3)}
# float32 parameter gradients of an autocast model, as a fraction of each gradient's largest |g|
GRAD_REL_TOL = 1e-2


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_inside_autocast_is_computed_in_the_autocast_dtype(dtype, fused):
    x, w, b = torch.randn(2, 4, 9, 7), torch.randn(6, 2, 3, 3), torch.randn(6)
    args = dict(stride=(2, 1), padding=1, groups=2)
    conv = CF.conv2d_relu if fused else CF.conv2d
    with torch.autocast("cpu", dtype):
        got = conv(x, w, b, **args)
        ref = F.conv2d(x, w, b, **args)
        ref = F.relu(ref) if fused else ref
    assert got.dtype == ref.dtype == dtype
    # exactly convkit's reduced-precision path on the cast inputs: float32 inside, one rounding
    assert torch.equal(got, conv(x.to(dtype), w.to(dtype), b.to(dtype), **args))
    torch.testing.assert_close(got.float(), ref.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_pool_keep_their_input_dtype_and_float64_is_not_cast(dtype):
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype):
        assert CF.relu(x).dtype == F.relu(x).dtype == torch.float32
        assert CF.max_pool2d(x, 2).dtype == F.max_pool2d(x, 2).dtype == torch.float32
        assert CF.relu(x.to(dtype)).dtype == dtype
        x64, w64 = x.double(), torch.randn(4, 3, 3, 3, dtype=torch.float64)
        assert CF.conv2d(x64, w64).dtype == F.conv2d(x64, w64).dtype == torch.float64
        with torch.autocast("cpu", enabled=False):
            assert CF.conv2d(x, w64.float()).dtype == torch.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_converted_model_under_autocast_matches_torch(dtype):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    model = convkit.convert(copy.deepcopy(ref))
    x = torch.randn(4, 3, 14, 14)
    outs = []
    for m in (ref, model):
        with torch.autocast("cpu", dtype):
            y = m(x)
        y.float().square().mean().backward()
        outs.append((y, [p.grad for p in m.parameters()]))
    (ry, rgrads), (gy, ggrads) = outs
    assert gy.dtype == ry.dtype == dtype
    torch.testing.assert_close(gy.float(), ry.float(), **TOL[dtype])
    for g, r in zip(ggrads, rgrads):
        assert g.dtype == r.dtype == torch.float32  # parameters stay float32
        # relative to the gradient's own scale (its largest element is ~0.01-0.1): measured
        # 0 (bfloat16, bit-equal) and <= 8e-4 (float16) of it; a gradient 5 % off or all zero
        # fails
        scale = r.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(g, r, atol=GRAD_REL_TOL * scale, rtol=GRAD_REL_TOL)


def test_autocast_inside_a_compiled_model():
    torch.manual_seed(0)
    model = convkit.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)))
    x = torch.randn(2, 3, 9, 9)

    def run(x):
        with torch.autocast("cpu", torch.bfloat16):
            return model(x)

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(run)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    got = torch.compile(run, fullgraph=True, backend="aot_eager")(x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, run(x))


@pytest.mark.parametrize("name", ["conv2d", "conv2d_relu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_registered_ops_follow_autocast_when_called_directly(name, dtype):
    x, w, b = torch.randn(2, 4, 9, 7), torch.randn(6, 2, 3, 3), torch.randn(6)
    op = getattr(torch.ops.convkit, name)
    args = ([2, 1], [1, 1], [1, 1], 2, "im2col")
    with torch.autocast("cpu", dtype):
        got = op(x, w, b, *args)
        ref = F.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2)
        ref = F.relu(ref) if name == "conv2d_relu" else ref
    assert got.dtype == ref.dtype == dtype
    assert torch.equal(got, op(x.to(dtype), w.to(dtype), b.to(dtype), *args))
    torch.testing.assert_close(got.float(), ref.float(), **TOL[dtype])
    # float64 is not cast; outside autocast nothing is
    with torch.autocast("cpu", dtype):
        assert op(x.double(), w.double(), b.double(), *args).dtype == torch.float64
    assert op(x, w, b, *args).dtype == torch.float32
