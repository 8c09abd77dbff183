"""Bad input raises a clear Python exception naming the argument, before any kernel runs.

Where torch rejects the same call, both must raise; convkit's exceptions derive from the type a
user expects (ValueError / TypeError) and from RuntimeError, which torch raises.
"""
import pytest
import torch
import torch.nn.functional as F

import convkit.functional as CF
from convkit import nn as cnn
from convkit.kernels.shapes import ArgumentError, DtypeError

x4 = torch.randn(2, 3, 5, 5)
w4 = torch.randn(4, 3, 3, 3)

CONV_BAD = [
    # (description, args, kwargs, exception, words in message)
    ("2-D input", (torch.randn(3, 5), w4), {}, ValueError, "3D (unbatched) or 4D"),
    ("5-D input", (torch.randn(1, 2, 3, 5, 5), w4), {}, ValueError, "3D (unbatched) or 4D"),
    ("3-D weight", (x4, torch.randn(4, 3, 3)), {}, ValueError, "weight"),
    ("channels", (x4, torch.randn(4, 2, 3, 3)), {}, ValueError, "to have 2 channels"),
    ("groups not dividing K", (torch.randn(2, 4, 5, 5), torch.randn(3, 2, 3, 3)),
     {"groups": 2}, ValueError, "divisible by 2"),
    ("groups*Cg != C", (x4, w4), {"groups": 2}, ValueError, "to have 6 channels"),
    ("groups 0", (x4, w4), {"groups": 0}, ValueError, "groups"),
    ("stride 0", (x4, w4), {"stride": 0}, ValueError, "stride"),
    ("stride -1", (x4, w4), {"stride": (1, -1)}, ValueError, "stride"),
    ("stride 3-tuple", (x4, w4), {"stride": (1, 1, 1)}, ValueError, "stride"),
    ("negative padding", (x4, w4), {"padding": -1}, ValueError, "padding"),
    ("dilation 0", (x4, w4), {"dilation": 0}, ValueError, "dilation"),
    ("kernel larger than padded input", (x4, torch.randn(4, 3, 7, 7)), {}, ValueError,
     "Kernel size can't be greater"),
    ("dilated kernel too large", (x4, w4), {"dilation": 3}, ValueError,
     "Kernel size can't be greater"),
    ("same with stride", (x4, w4), {"padding": "same", "stride": 2}, ValueError, "strided"),
    ("bad padding string", (x4, w4), {"padding": "full"}, ValueError, "padding"),
    ("bias size", (x4, w4, torch.randn(5)), {}, ValueError, "bias"),
    ("no output channels", (x4, torch.randn(0, 3, 3, 3)), {}, ValueError,
     "expected weight to be at least 1 at dimension 0"),
    ("fewer output channels than groups", (torch.randn(2, 4, 5, 5), torch.randn(1, 2, 3, 3)),
     {"groups": 2}, ValueError, "expected weight to be at least 2 at dimension 0"),
    ("empty kernel", (x4, torch.randn(4, 3, 0, 3)), {}, ValueError, "kernel of at least 1x1"),
    ("empty kernel, same padding", (x4, torch.randn(4, 3, 3, 0)), {"padding": "same"},
     ValueError, "kernel of at least 1x1"),
    ("int input", (x4.long(), w4.long()), {}, TypeError, "dtype"),
    ("weight dtype", (x4, w4.double()), {}, TypeError, "weight"),
    ("bias dtype", (x4, w4, torch.randn(4).double()), {}, TypeError, "bias"),
    ("int32 input", (x4.int(), w4.int()), {}, TypeError, "floating dtype"),
    ("half weight with float input", (x4, w4.half()), {}, TypeError, "weight"),
]


@pytest.mark.parametrize("desc,args,kwargs,exc,words", CONV_BAD, ids=[c[0] for c in CONV_BAD])
def test_conv2d_bad_input(desc, args, kwargs, exc, words):
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        CF.conv2d(*args, **kwargs)
    assert isinstance(info.value, (RuntimeError, TypeError))
    if desc not in ("int input", "int32 input"):  # torch computes those on the CPU
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            F.conv2d(*args, **kwargs)


def test_conv2d_not_a_tensor():
    with pytest.raises(TypeError, match="input"):
        CF.conv2d([[1.0]], w4)
    with pytest.raises(ValueError, match="algorithm"):
        CF.conv2d(x4, w4, algorithm="fft")
    with pytest.raises(ValueError, match="algorithm"):
        cnn.Conv2d(3, 4, 3, algorithm="fft")


@pytest.mark.parametrize("kwargs", [{"stride": 1.5}, {"padding": (1.0, 1)}, {"dilation": "2"},
                                    {"groups": 1.0}])
def test_conv2d_wrongly_typed_arguments_raise_type_error(kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        CF.conv2d(x4, w4, **kwargs)
    with pytest.raises(TypeError):
        F.conv2d(x4, w4, **kwargs)


def test_errors_derive_from_runtime_error_like_torch():
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentError, RuntimeError)
    assert issubclass(DtypeError, TypeError) and issubclass(DtypeError, RuntimeError)


POOL_BAD = [
    ("pad > half kernel", (x4, 3), {"padding": 2}),
    # the effective (dilated) kernel passes torch's first check, the kernel size its second
    ("pad > half kernel, dilated", (torch.randn(1, 1, 9, 9), 3), {"padding": 2, "dilation": 2}),
    ("pad > half kernel, one side", (x4, (4, 3)), {"padding": (2, 2)}),
    ("kernel 0", (x4, 0), {}),
    ("kernel 0, stride 1", (x4, 0, 1), {}),
    ("negative kernel", (x4, -1, 1), {}),
    ("stride 0", (x4, 2), {"stride": 0}),
    ("negative stride", (x4, 2), {"stride": -1}),
    ("dilation 0", (x4, 2), {"dilation": 0}),
    ("output too small", (x4, 7), {}),
    ("2-D input", (torch.randn(5, 5), 2), {}),
    ("5-D input", (torch.randn(1, 1, 3, 5, 5), 2), {}),
    ("zero channels", (torch.randn(1, 0, 5, 5), 2), {}),
    ("zero width", (torch.randn(2, 1, 5, 0), 1), {}),
    ("kernel 3-tuple", (x4, (2, 2, 2)), {}),
    ("negative padding", (x4, 2), {"padding": -1}),
    ("negative padding, empty batch", (torch.randn(0, 1, 49), 2, 50, -1), {}),
]


@pytest.mark.parametrize("desc,args,kwargs", POOL_BAD, ids=[c[0] for c in POOL_BAD])
def test_max_pool2d_bad_input_raises_torchs_message(desc, args, kwargs):
    """convkit's message contains torch's own (checked in torch's order, so the first failing
    check is the same one), and the exception is a RuntimeError as torch's."""
    with pytest.raises(RuntimeError) as torch_error:
        F.max_pool2d(*args, **kwargs)
    torch_words = str(torch_error.value).split("\n")[0]
    with pytest.raises(RuntimeError) as ours:
        CF.max_pool2d(*args, **kwargs)
    assert torch_words in str(ours.value)
    assert isinstance(ours.value, ValueError)


def test_max_pool2d_and_relu_reject_bool_as_torch():
    for op in (lambda t: CF.max_pool2d(t, 2), CF.relu):
        with pytest.raises(NotImplementedError if op is not CF.relu else RuntimeError,
                           match="Bool|Boolean"):
            op(torch.ones(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="Boolean inputs not supported for relu"):
        CF.relu(torch.tensor([True, False]))
    with pytest.raises(NotImplementedError, match="\"max_pool2d\" not implemented for 'Bool'"):
        CF.max_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.bool), 2)


def test_symmetric_pad_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        CF.pad(x4, (1, 1, 1, 1), mode="wrap")
    with pytest.raises(ValueError, match="symmetric"):
        CF.pad(x4, (1, 1), mode="symmetric")


def test_mixed_devices_are_refused():
    w_meta = torch.empty(4, 3, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="same device"):
        CF.conv2d(x4, w_meta)


def test_unsupported_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not supported"):
        CF.conv2d(torch.empty(2, 3, 5, 5, device="meta"), torch.empty(4, 3, 3, 3, device="meta"))
