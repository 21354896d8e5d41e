"""Atrous convolution on the GPU: the Numba CUDA twin of "direct" under the simulator (tiny
inputs), and every method on CuPy arrays against the CPU (needs a GPU)."""
import numpy as np
import pytest

from minilab import backend
from minilab.ops import atrous
from minilab.ops.atrous import METHODS, atrous_conv2d_backward, atrous_conv2d_forward, unsupported


@pytest.mark.cudasim
@pytest.mark.parametrize("rate, stride", [(1, 1), (2, 1), (3, 2)])
def test_cuda_kernels_match_njit_kernels(rate, stride, rng):
    xpad = rng.standard_normal((2, 2, 11, 10))
    w = rng.standard_normal((3, 2, 3, 2))
    ho, wo = atrous._out_size(xpad.shape, w.shape, rate, stride)
    dy = rng.standard_normal((2, 3, ho, wo))
    y_cpu, y_gpu = np.empty((2, 3, ho, wo)), np.empty((2, 3, ho, wo))
    atrous._direct_forward_cpu(xpad, w, rate, stride, y_cpu)
    atrous._direct_forward_cuda(xpad, w, rate, stride, y_gpu)
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=1e-12, atol=1e-12)
    grads_cpu = np.empty_like(xpad), np.empty_like(w)
    grads_gpu = np.empty_like(xpad), np.empty_like(w)
    atrous._direct_backward_cpu(xpad, w, dy, rate, stride, *grads_cpu)
    atrous._direct_backward_cuda(xpad, w, dy, rate, stride, *grads_gpu)
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu):
        np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-12, atol=1e-12)


@pytest.mark.cudasim
@pytest.mark.parametrize("rate, stride, r0, r1", [(1, 1, 0, 18), (3, 1, 4, 9), (2, 3, 1, 5)])
def test_cuda_im2col_and_col2im_match_njit(rate, stride, r0, r1, rng):
    """One block of output rows r0 <= n·Ho + i < r1, as the blocked GEMM uses them."""
    xpad = rng.standard_normal((2, 3, 12, 11)).astype(np.float32)
    kh, kw = 3, 2
    ho, wo = atrous._out_size(xpad.shape, (1, 3, kh, kw), rate, stride)
    r1 = min(r1, 2 * ho)
    cols_cpu, cols_gpu = (np.empty((3 * kh * kw, r1 - r0, wo), np.float32) for _ in range(2))
    atrous._im2col_cpu(xpad, kh, kw, rate, stride, ho, r0, cols_cpu)
    atrous._im2col_cuda(xpad, kh, kw, rate, stride, ho, r0, cols_gpu)
    np.testing.assert_array_equal(cols_gpu, cols_cpu)
    dcols = rng.standard_normal(cols_cpu.shape).astype(np.float32)
    start = rng.standard_normal(xpad.shape).astype(np.float32)  # col2im adds to what is there
    dx_cpu, dx_gpu = start.copy(), start.copy()
    atrous._col2im_cpu(dcols, kh, kw, rate, stride, ho, r0, dx_cpu)
    atrous._col2im_cuda(dcols, kh, kw, rate, stride, ho, r0, dx_gpu)
    np.testing.assert_allclose(dx_gpu, dx_cpu, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dx_cpu, start)


@pytest.mark.cudasim
@pytest.mark.parametrize("k, rate, stride, padding, width", [
    (3, 1, 1, (1, 1), 8), (3, 4, 1, (4, 2), 8), (3, 2, 2, (3, 0), 8), (1, 1, 1, (0, 0), 8), (2, 5, 3, (6, 1), 8),
    (3, 2, 1, (2, 3), 37), (2, 3, 2, (1, 2), 70)])  # rows wider than the gather's 32 threads
def test_cuda_tap_kernels_match_the_slices(k, rate, stride, padding, width, rng, monkeypatch):
    """The shifted method's GPU kernels add (forward) and gather (backward) exactly what its
    NumPy slices do, on tap groups of one and of several tap rows (some reading only padding)."""
    x = rng.standard_normal((1, 2, 9, width))
    for block in (2**20, 1):  # one group holding every tap row; one tap row per group
        monkeypatch.setitem(atrous._BLOCK_BYTES, "cpu", block)
        ho, wo = atrous._out_size((1, 2, 9 + 2 * padding[0], width + 2 * padding[1]), (3, 2, k, k), rate, stride)
        rows = atrous._tap_ranges(rate, stride, padding[0], k, 9, ho)
        cols = atrous._tap_ranges(rate, stride, padding[1], k, width, wo)
        groups = atrous._tap_groups(x, (3, 2, k, k), rows)
        assert groups
        for u0, u1, a0, a1 in groups:
            z = rng.standard_normal((u1 - u0, k, 3, a1 - a0, width))
            start = rng.standard_normal((3, ho, wo))
            y_cpu, y_gpu = start.copy(), start.copy()
            atrous._add_taps(z, y_cpu, u0, a0, rows, cols, stride)
            backend.launch(atrous._add_taps_kernel, y_gpu.size, z, u0, a0, rate, stride, *padding, y_gpu)
            np.testing.assert_allclose(y_gpu, y_cpu, rtol=1e-12, atol=1e-12)
            dy = rng.standard_normal((3, ho, wo))
            d_cpu, d_gpu = np.full_like(z, np.nan), np.full_like(z, np.nan)
            atrous._gather_taps(dy, u0, a0, rows, cols, stride, d_cpu)
            atrous._gather_taps_cuda(dy, u0, a0, rate, stride, padding, d_gpu)
            np.testing.assert_array_equal(d_gpu, d_cpu)
            assert np.count_nonzero(d_cpu) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_arrays_give_the_cpu_result(method, dtype, rng):
    if unsupported(method, (3, 3), 3, 1, gpu=True):
        pytest.skip(unsupported(method, (3, 3), 3, 1, gpu=True))
    cp = backend.cupy
    x = rng.standard_normal((2, 3, 21, 19)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    args = dict(rate=3, padding=2, method=method)
    out, cache = atrous_conv2d_forward(x, w, b, **args)
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = atrous_conv2d_backward(dout, cache)
    out_g, cache_g = atrous_conv2d_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b), **args)
    grads_g = atrous_conv2d_backward(cp.asarray(dout), cache_g)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for cpu, gpu in zip((out,) + grads, (out_g,) + grads_g):
        assert isinstance(gpu, cp.ndarray) and gpu.dtype == dtype
        np.testing.assert_allclose(cp.asnumpy(gpu), cpu, rtol=tol, atol=tol)


@pytest.mark.gpu
def test_mixed_numpy_and_cupy_inputs_are_refused(rng):
    cp = backend.cupy
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="w is a CuPy array"):
        atrous_conv2d_forward(x, cp.asarray(w))
    with pytest.raises(TypeError, match="b is a NumPy array"):
        atrous_conv2d_forward(cp.asarray(x), cp.asarray(w), np.zeros(3, np.float32))
