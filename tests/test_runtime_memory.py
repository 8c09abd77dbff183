"""The CPU kernels' result cache (convkit/runtime/memory.py): a cached buffer is handed out again
only once nothing refers to it, free buffers stay bounded, and results stay correct while earlier
ones are alive."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convkit
import convkit.functional as CF
from convkit.runtime import memory as _workspace

BIG = (64, 1024)  # 256 KiB of float32: at the caching threshold


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(_workspace, "CACHE_MAX_FREE_BYTES", 64 << 20)
    _workspace.empty_cache()
    yield
    _workspace.empty_cache()


def test_buffer_in_use_is_not_handed_out_again():
    a = _workspace.empty(BIG, np.float32)
    b = _workspace.empty(BIG, np.float32)
    assert a.shape == BIG and a.dtype == np.float32 and a.flags.c_contiguous
    assert not np.shares_memory(a, b)
    address = a.ctypes.data
    del a
    c = _workspace.empty(BIG, np.float32)
    assert c.ctypes.data == address  # the freed buffer came back
    assert not np.shares_memory(b, c)


def test_tensors_and_views_keep_their_buffer():
    arr = _workspace.empty(BIG, np.float32)
    address = arr.ctypes.data
    t = torch.from_numpy(arr)
    del arr
    view = t[3:5].t()  # a torch view keeps the storage, hence the numpy array, hence the buffer
    del t
    other = _workspace.empty(BIG, np.float32)
    assert other.ctypes.data != address
    del view
    again = _workspace.empty(BIG, np.float32)
    assert again.ctypes.data == address


def test_same_bytes_other_dtype_and_shape_reuse():
    a = _workspace.empty((128, 512), np.float64)
    address = a.ctypes.data
    del a
    b = _workspace.empty((64, 1024), np.int64)
    assert b.ctypes.data == address and b.shape == (64, 1024) and b.dtype == np.int64


def test_small_results_are_not_cached():
    used, free = _workspace.cached_bytes()
    a = _workspace.empty((10, 10), np.float32)
    assert _workspace.cached_bytes() == (used, free)
    assert a.shape == (10, 10)


def test_free_bytes_bounded_and_empty_cache(monkeypatch):
    monkeypatch.setattr(_workspace, "CACHE_MAX_FREE_BYTES", 3 << 20)
    used0 = _workspace.cached_bytes()[0]
    keep = _workspace.empty((1 << 18,), np.float32)  # 1 MiB, in use throughout
    for n in range(1, 9):  # 8 sizes of 1-8 x 256 KiB, each freed at once
        _workspace.empty((n << 16,), np.float32)
    used, free = _workspace.cached_bytes()
    assert used == used0 + (1 << 20)
    assert 0 < free <= 3 << 20
    _workspace.empty_cache()
    assert _workspace.cached_bytes() == (used0 + (1 << 20), 0)
    assert keep.shape == (1 << 18,)


def test_cache_off(monkeypatch):
    monkeypatch.setattr(_workspace, "CACHE_MAX_FREE_BYTES", 0)
    a = _workspace.empty(BIG, np.float32)
    assert a.base is None  # a plain numpy.empty array, not a view of a cached buffer


def test_live_results_are_not_overwritten():
    """Outputs of earlier calls keep their values while later calls of the same shape run."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 16, 32, 32, generator=gen) for _ in range(3)]
    ys = [CF.relu(x) for x in xs]
    pools = [CF.max_pool2d(x, 2, return_indices=True) for x in xs]
    for x, y, (p, i) in zip(xs, ys, pools):
        torch.testing.assert_close(y, F.relu(x), rtol=0, atol=0)
        ref_p, ref_i = F.max_pool2d(x, 2, return_indices=True)
        torch.testing.assert_close(p, ref_p, rtol=0, atol=0)
        assert torch.equal(i, ref_i)
    del ys, pools
    # buffers come back only after the outputs died: the next results are still right
    for x in xs:
        torch.testing.assert_close(CF.relu(x), F.relu(x), rtol=0, atol=0)


def test_training_steps_reuse_buffers():
    """Two identical SimpleCNN steps: the second takes no new result buffers, and both give the
    same gradients."""
    model = convkit.models.SimpleCNN(seed=0).eval()  # no dropout: both steps alike
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    first = step()
    total = sum(_workspace.cached_bytes())
    second = step()
    assert sum(_workspace.cached_bytes()) == total
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_public_empty_cache():
    CF.relu(torch.randn(*BIG))
    assert _workspace.cached_bytes()[1] > 0
    convkit.empty_cache()
    assert _workspace.cached_bytes()[1] == 0


def test_threads_share_the_cache_without_sharing_buffers():
    """Python threads calling kernels of the same shapes at once: every result stays its own
    (a buffer handed to two callers would show as a wrong value in one of them)."""
    import threading

    errors = []

    def work(seed):
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(16, 4, 3, 3, generator=gen)  # results of 512 KiB: cached
        try:
            for _ in range(15):
                x = torch.randn(8, 4, 32, 32, generator=gen)
                y = CF.conv2d(x, w, padding=1)
                r = CF.relu(y)
                p = CF.max_pool2d(r, 2)
                torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(r, F.relu(y), rtol=0, atol=0)
                torch.testing.assert_close(p, F.max_pool2d(r, 2), rtol=0, atol=0)
        except Exception as e:  # noqa: BLE001 - reported below, from the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_results_kept_alive_beyond_the_tracked_count(monkeypatch):
    """Many results of one size kept alive: all distinct, and at most CACHE_MAX_RECORDS tracked
    (so a lookup's scan stays short)."""
    monkeypatch.setattr(_workspace, "CACHE_MAX_RECORDS", 4)
    used0 = _workspace.cached_bytes()[0]
    kept = [_workspace.empty(BIG, np.float32) for _ in range(10)]
    for i, a in enumerate(kept):
        a.fill(i)
    assert [float(a[0, 0]) for a in kept] == list(range(10))
    assert _workspace.cached_bytes()[0] - used0 <= 4 * BIG[0] * BIG[1] * 4
    address = kept[0].ctypes.data
    del kept[0]
    assert _workspace.empty(BIG, np.float32).ctypes.data == address  # tracked ones still reused


def test_cache_sound_only_on_cpython_with_the_gil():
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    assert _workspace.CACHE_SOUND == (sys.implementation.name == "cpython" and gil)


def test_cache_off_where_refcounts_are_not_exact(monkeypatch):
    # free-threaded CPython / PyPy: no cached buffers, every result a fresh array
    monkeypatch.setattr(_workspace, "CACHE_SOUND", False)
    used, free = _workspace.cached_bytes()
    a = _workspace.empty(BIG, np.float32)
    del a
    b = _workspace.empty(BIG, np.float32)
    c = _workspace.empty(BIG, np.float32)
    assert b.base is None and c.base is None  # plain numpy.empty, not views of cached buffers
    assert not np.shares_memory(b, c)
    assert _workspace.cached_bytes() == (used, free)
