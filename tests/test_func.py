"""torch.func over convkit: per-sample gradients (vmap of grad), jacrev, ensembles (vmap over
stacked weights, inference and training), gradients of gradients, forward mode (jacfwd, hessian,
dual tensors); the references are torch's own ops and loops."""
import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, stack_module_state, vmap

import convkit
import convkit.functional as CF


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, groups=2, dilation=(1, 2), padding=(1, 2)), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(6 * 2 * 2, 3)).double()


@pytest.mark.parametrize("fuse_relu", [False, True])
def test_per_sample_gradients_equal_a_loop_over_examples(fuse_relu):
    ref = small_cnn()
    model = convkit.convert(copy.deepcopy(ref), fuse_relu=fuse_relu)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(5, 1, 12, 12, dtype=torch.float64)
    target = torch.randint(0, 3, (5,))

    def loss(model):
        def f(params, xi, ti):
            out = functional_call(model, params, (xi.unsqueeze(0),))
            return F.cross_entropy(out, ti.unsqueeze(0))
        return f

    per_sample = vmap(grad(loss(model)), in_dims=(None, 0, 0))(params, x, target)
    for name, p in ref.named_parameters():
        loop = []
        for i in range(len(x)):
            ref.zero_grad()
            F.cross_entropy(ref(x[i:i + 1]), target[i:i + 1]).backward()
            loop.append(p.grad.clone())
        torch.testing.assert_close(per_sample[name], torch.stack(loop), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wrt", ["input", "weight"])
def test_jacrev_of_a_tiny_conv_equals_autograd_jacobian(wrt):
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    w = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    args = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    if wrt == "input":
        got = jacrev(lambda x: CF.conv2d(x, w, None, **args))(x)
        want = torch.autograd.functional.jacobian(lambda x: F.conv2d(x, w, None, **args), x)
    else:  # the fused conv + ReLU, with a bias
        got = jacrev(lambda w: CF.conv2d_relu(x, w, b, **args))(w)
        want = torch.autograd.functional.jacobian(
            lambda w: F.relu(F.conv2d(x, w, b, **args)), w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_jacrev_of_pool_and_relu_equals_autograd_jacobian():
    x = torch.randperm(2 * 6 * 5, dtype=torch.float64).view(1, 2, 6, 5) - 30

    def mine(x):
        return CF.max_pool2d(CF.relu(x), (3, 2), stride=(2, 1), padding=1, ceil_mode=True)

    def ref(x):
        return F.max_pool2d(F.relu(x), (3, 2), stride=(2, 1), padding=1, ceil_mode=True)

    torch.testing.assert_close(jacrev(mine)(x), torch.autograd.functional.jacobian(ref, x))


def test_ensemble_of_models_through_vmap_equals_each_model():
    """vmap over stacked parameters (torch.func's model-ensembling recipe): the convs run with
    a batch of weights, folded into the groups by convkit's vmap rules."""
    refs = [small_cnn() for _ in range(3)]
    for i, r in enumerate(refs):
        torch.manual_seed(i)
        for p in r.parameters():
            p.data.normal_()
    models = [convkit.convert(copy.deepcopy(r)) for r in refs]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)

    def run(params, buffers):
        return functional_call(base, (params, buffers), (x,))

    got = vmap(run)(params, buffers)
    torch.testing.assert_close(got, torch.stack([r(x) for r in refs]), rtol=1e-10, atol=1e-10)
    # training the ensemble: one gradient per model, through the in-place ReLUs as well
    grads = vmap(grad(lambda p, b: run(p, b).square().sum()))(params, buffers)
    for i, r in enumerate(refs):
        r.zero_grad()
        r(x).square().sum().backward()
        for name, p in r.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad, rtol=1e-10, atol=1e-10)


def test_gradient_of_a_gradient_under_torch_func():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)

    def inner(conv, pool):
        return lambda x: pool(conv(x, w, padding=1), 2).pow(2).sum()

    def outer(f):
        return lambda x: grad(f)(x).pow(2).sum()

    got = grad(outer(inner(CF.conv2d, CF.max_pool2d)))(x)
    want = grad(outer(inner(F.conv2d, F.max_pool2d)))(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_vmap_over_a_non_leading_dimension():
    x = torch.randn(3, 4, 2, 7, 6, dtype=torch.float64)  # vmapped over dim 2
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)

    def f(x):
        return CF.max_pool2d(CF.relu(CF.conv2d(x, w, stride=(1, 2))), 2, ceil_mode=True)

    got = vmap(f, in_dims=2, out_dims=1)(x)
    want = torch.stack([f(x[:, :, i]) for i in range(x.shape[2])], dim=1)
    torch.testing.assert_close(got, want)


def _net(conv, relu, pool, b):
    def f(x, w):
        return pool(relu(conv(x, w, b, padding=1, stride=(1, 2))), 2, ceil_mode=True)
    return f


MINE = _net(CF.conv2d, CF.relu, CF.max_pool2d, None)
TORCH = _net(F.conv2d, F.relu, F.max_pool2d, None)


@pytest.mark.parametrize("argnums", [0, 1])
def test_forward_mode_jacfwd_and_hessian_equal_torch(argnums):
    """Forward mode runs on the Functions' tangents (each op is linear in each tensor argument,
    or piecewise so): jacfwd, and hessian = jacfwd of jacrev (jvp over vmap)."""
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    w = torch.randn(4, 2, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(jacfwd(MINE, argnums=argnums)(x, w),
                               jacfwd(TORCH, argnums=argnums)(x, w))

    def energy(f):
        return lambda x, w: f(x, w).pow(2).sum()

    torch.testing.assert_close(hessian(energy(MINE), argnums=argnums)(x[:1], w),
                               hessian(energy(TORCH), argnums=argnums)(x[:1], w))


def test_forward_ad_dual_tensors_and_gradcheck_forward_mode():
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    tangent = torch.randn_like(x)
    tangents = []
    for conv, relu, pool in ((CF.conv2d, CF.relu, CF.max_pool2d),
                             (F.conv2d, F.relu, F.max_pool2d)):
        with fwAD.dual_level():
            dual = fwAD.make_dual(x.clone(), tangent)
            y = pool(relu(conv(dual, w, b, padding=1), inplace=True), 2)
            tangents.append(fwAD.unpack_dual(y).tangent)
    torch.testing.assert_close(tangents[0], tangents[1])
    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: CF.max_pool2d(CF.conv2d_relu(x, w, b, padding=1), 2, ceil_mode=True), (xr,),
        check_forward_ad=True, check_backward_ad=True)
