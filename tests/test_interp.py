"""Bilinear resizing and label subsampling: a per-pixel loop reference, scipy.ndimage,
torch's interpolate, gradient checks, and bad inputs."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from minilab import backend
from minilab.gradcheck import numerical_gradient, relative_error
from minilab.ops import interp
from minilab.ops.interp import (METHODS, bilinear_resize_backward, bilinear_resize_forward,
                                downsample_labels)

SIZES = [((5, 7), (17, 9)), ((9, 8), (4, 3)), ((6, 6), (13, 2)), ((1, 4), (3, 5)),
         ((4, 4), (1, 1)), ((3, 3), (3, 3)), ((65, 65), (513, 513))]


def loop_resize(x, size, align_corners):
    """One output pixel at a time, the way Caffe's Interp layer and PyTorch's CPU kernel do it."""
    n, c, hin, win = x.shape
    h, w = size
    out = np.zeros((n, c, h, w), dtype=np.float64)

    def source(i, n_in, n_out):
        if align_corners:
            s = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(math.floor(s))
        i1 = i0 + 1 if i0 < n_in - 1 else i0
        return i0, i1, s - i0

    for i in range(h):
        y0, y1, ly = source(i, hin, h)
        for j in range(w):
            x0, x1, lx = source(j, win, w)
            out[:, :, i, j] = ((1 - ly) * ((1 - lx) * x[:, :, y0, x0] + lx * x[:, :, y0, x1])
                               + ly * ((1 - lx) * x[:, :, y1, x0] + lx * x[:, :, y1, x1]))
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("in_size, out_size", SIZES[:-1])
def test_matches_loop_reference(in_size, out_size, align_corners, method, rng):
    x = rng.standard_normal((2, 3) + in_size)
    out, _ = bilinear_resize_forward(x, out_size, align_corners=align_corners, method=method)
    np.testing.assert_allclose(out, loop_resize(x, out_size, align_corners), rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(hin=st.integers(1, 12), win=st.integers(1, 12), h=st.integers(1, 30), w=st.integers(1, 30),
       align_corners=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes_match_loop_reference(hin, win, h, w, align_corners, seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, hin, win))
    dout = np.random.default_rng(seed + 1).standard_normal((1, 2, h, w))
    dxs = []
    for method in METHODS:
        out, cache = bilinear_resize_forward(x, (h, w), align_corners=align_corners, method=method)
        np.testing.assert_allclose(out, loop_resize(x, (h, w), align_corners), rtol=1e-12, atol=1e-12)
        dxs.append(bilinear_resize_backward(dout, cache))
    np.testing.assert_allclose(dxs[0], dxs[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_size, out_size", SIZES)
def test_scipy_zoom_coincides_for_both_conventions(in_size, out_size, rng):
    """``align_corners=True`` is scipy's ``grid_mode=False`` (corner centres fixed);
    ``align_corners=False`` is ``grid_mode=True`` (outer edges fixed) with ``mode="nearest"``,
    whose repeated edge pixel is exactly PyTorch's clamping of the source coordinate."""
    x = rng.standard_normal((1, 2) + in_size)
    zoom = (1, 1, out_size[0] / in_size[0], out_size[1] / in_size[1])
    aligned = ndimage.zoom(x, zoom, order=1, grid_mode=False)
    half_pixel = ndimage.zoom(x, zoom, order=1, grid_mode=True, mode="nearest")
    assert aligned.shape[2:] == half_pixel.shape[2:] == out_size
    np.testing.assert_allclose(bilinear_resize_forward(x, out_size, align_corners=True)[0],
                               aligned, atol=1e-12)
    np.testing.assert_allclose(bilinear_resize_forward(x, out_size, align_corners=False)[0],
                               half_pixel, atol=1e-12)


def test_scipy_border_modes_that_do_not_clamp_differ(rng):
    x = rng.standard_normal((1, 1, 5, 6))
    ours, _ = bilinear_resize_forward(x, (17, 13), align_corners=False)
    zoom = (1, 1, 17 / 5, 13 / 6)
    reflect = ndimage.zoom(x, zoom, order=1, grid_mode=True, mode="reflect")
    mirror = ndimage.zoom(x, zoom, order=1, grid_mode=True, mode="mirror")
    np.testing.assert_allclose(ours, reflect, atol=1e-12)
    assert np.abs(ours - mirror).max() > 0.1
    np.testing.assert_allclose(ours[..., 2:-2, 2:-2], mirror[..., 2:-2, 2:-2], atol=1e-12)  # inside


def test_scipy_map_coordinates_at_the_aligned_source_points(rng):
    x = rng.standard_normal((7, 10))
    h, w = 19, 4
    rows = np.arange(h) * (7 - 1) / (h - 1)
    cols = np.arange(w) * (10 - 1) / (w - 1)
    grid = np.meshgrid(rows, cols, indexing="ij")
    expected = ndimage.map_coordinates(x, grid, order=1)
    out, _ = bilinear_resize_forward(x[None, None], (h, w), align_corners=True)
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("in_size, out_size", SIZES)
def test_matches_torch_interpolate(in_size, out_size, align_corners, method, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((2, 3) + in_size)
    out, cache = bilinear_resize_forward(x, out_size, align_corners=align_corners, method=method)
    expected = F.interpolate(torch.from_numpy(x), size=out_size, mode="bilinear",
                             align_corners=align_corners).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    tx = torch.from_numpy(x).requires_grad_()
    F.interpolate(tx, size=out_size, mode="bilinear",
                  align_corners=align_corners).backward(torch.from_numpy(dout))
    np.testing.assert_allclose(bilinear_resize_backward(dout, cache), tx.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_float32_matches_torch_and_stays_within_rounding(align_corners, method, rng):
    """In float32 torch computes the source coordinates in float32 (with the half-pixel
    convention, errors of ~3e-5 at 513 pixels); minilab computes the weights in float64 and
    rounds them once, so it stays within float32 rounding of the float64 result."""
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((1, 3, 65, 65))
    x32 = x.astype(np.float32)
    exact = bilinear_resize_forward(x, (513, 513), align_corners=align_corners)[0]
    ours = bilinear_resize_forward(x32, (513, 513), align_corners=align_corners, method=method)[0]
    theirs = torch.nn.functional.interpolate(torch.from_numpy(x32), size=(513, 513), mode="bilinear",
                                             align_corners=align_corners).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.abs(ours - exact).max() < 1e-6  # values are of order 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("in_size, out_size", [((4, 5), (9, 13)), ((7, 6), (3, 4)), ((1, 3), (2, 1))])
def test_gradient_check(in_size, out_size, align_corners, method, rng):
    x = rng.standard_normal((2, 2) + in_size)
    fwd = lambda: bilinear_resize_forward(x, out_size, align_corners=align_corners, method=method)
    out, cache = fwd()
    dout = rng.standard_normal(out.shape)
    num = numerical_gradient(lambda: fwd()[0], x, dout)
    assert relative_error(bilinear_resize_backward(dout, cache), num) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_backward_is_the_adjoint_on_a_large_map(method, rng):
    """<A x, y> = <x, A^T y>: the backward is the exact transpose, checked at the ×8 size."""
    x = rng.standard_normal((1, 3, 65, 65))
    out, cache = bilinear_resize_forward(x, (513, 513), align_corners=False, method=method)
    y = rng.standard_normal(out.shape)
    assert np.isclose(np.vdot(out, y), np.vdot(x, bilinear_resize_backward(y, cache)), rtol=1e-10)


@pytest.mark.parametrize("align_corners", [True, False])
def test_constants_and_identity_are_preserved(align_corners, rng):
    x = np.full((1, 1, 5, 6), 2.5)
    out, _ = bilinear_resize_forward(x, (23, 3), align_corners=align_corners)
    np.testing.assert_allclose(out, 2.5, rtol=1e-14)
    y = rng.standard_normal((2, 3, 5, 6))
    np.testing.assert_array_equal(bilinear_resize_forward(y, (5, 6), align_corners=align_corners)[0], y)


def test_kept_matrices_are_read_only_and_kept_apart_by_dtype_and_convention(rng):
    """The interpolation matrices are made once and shared between calls: a caller cannot
    write into one, and each size, convention and dtype has its own."""
    x = rng.standard_normal((1, 2, 5, 6))
    out, (_, a_h, *_) = bilinear_resize_forward(x, (9, 4), align_corners=True)
    assert bilinear_resize_forward(x, (9, 4), align_corners=True)[1][1] is a_h
    with pytest.raises(ValueError, match="read-only"):
        a_h[0, 0] = 7
    out32, cache32 = bilinear_resize_forward(x.astype(np.float32), (9, 4), align_corners=True)
    assert out32.dtype == cache32[1].dtype == np.float32
    np.testing.assert_allclose(out32, out, rtol=1e-5, atol=1e-5)
    _, cache_half = bilinear_resize_forward(x, (9, 4), align_corners=False)
    np.testing.assert_array_equal(cache_half[1], interp.interpolation_matrix(9, 5, False))
    np.testing.assert_array_equal(a_h, interp.interpolation_matrix(9, 5, True))


@pytest.mark.parametrize("args, error, message", [
    ((5, 3, "False"), TypeError, "align_corners must be True or False, got 'False'"),  # was True
    ((3, 0, True), ValueError, "n_in must be >= 1, got 0"),  # was lo = hi = -1
    ((0, 3, False), ValueError, "n_out must be >= 1, got 0"),
    ((2.5, 3, True), TypeError, "n_out must be an integer, got 2.5"),  # was 3 taps
    ((3, 2.0, False), TypeError, "n_in must be an integer"),
])
def test_public_taps_and_matrix_check_their_arguments(args, error, message):
    for function in (interp.interpolation_taps, interp.interpolation_matrix):
        with pytest.raises(error, match=message):
            function(*args)
    lo, hi, frac = interp.interpolation_taps(np.int64(3), np.int32(2), np.bool_(True))
    assert lo.tolist() == [0, 0, 1] and hi.tolist() == [1, 1, 1] and frac.tolist() == [0, 0.5, 0]


def test_interpolation_matrix_is_float32_or_float64():
    for dtype in (np.int32, np.float16, "abc"):  # int32 was NumPy's UFuncTypeError
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            interp.interpolation_matrix(3, 2, True, dtype=dtype)
    assert interp.interpolation_matrix(3, 2, True, dtype="float32").dtype == np.float32


@pytest.mark.parametrize("align_corners", [np.True_, np.False_])
def test_align_corners_takes_a_numpy_bool(align_corners, rng):
    x = rng.standard_normal((1, 2, 4, 5))
    got = bilinear_resize_forward(x, (7, 9), align_corners=align_corners)[0]
    np.testing.assert_array_equal(got, bilinear_resize_forward(x, (7, 9), align_corners=bool(align_corners))[0])


def test_aligned_upsampling_by_8_puts_score_pixel_i_on_image_pixel_8i(rng):
    x = rng.standard_normal((1, 4, 41, 41)).astype(np.float32)
    out, _ = bilinear_resize_forward(x, (321, 321), align_corners=True)
    np.testing.assert_allclose(out[:, :, ::8, ::8], x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("align_corners", [True, False])
def test_a_ramp_reveals_the_source_coordinate(align_corners):
    """On x[k] = k bilinear interpolation returns the source coordinate itself (clamped)."""
    n, out = 41, 328
    ramp = np.broadcast_to(np.arange(n, dtype=np.float64), (1, 1, 2, n)).copy()
    y, _ = bilinear_resize_forward(ramp, (2, out), align_corners=align_corners)
    j = np.arange(out)
    expected = j * (n - 1) / (out - 1) if align_corners else np.clip((j + 0.5) / 8 - 0.5, 0, n - 1)
    np.testing.assert_allclose(y[0, 0, 0], expected, atol=1e-12)


def test_bad_inputs():
    x = np.zeros((1, 2, 4, 4), dtype=np.float32)
    with pytest.raises(TypeError, match="align_corners"):
        bilinear_resize_forward(x, 8)  # no silent default
    with pytest.raises(TypeError, match="align_corners"):
        bilinear_resize_forward(x, 8, align_corners=1)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        bilinear_resize_forward(x.astype(np.int32), 8, align_corners=True)
    with pytest.raises(TypeError, match="x must be a NumPy"):
        bilinear_resize_forward(x.tolist(), 8, align_corners=True)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        bilinear_resize_forward(x[0], 8, align_corners=True)
    with pytest.raises(ValueError, match="NaN"):
        bilinear_resize_forward(np.full_like(x, np.nan), 8, align_corners=True)
    for empty in (x[:, :, :0], x[:, :, :, :0]):  # nothing to interpolate from
        for method in METHODS:
            with pytest.raises(ValueError, match="x must have a height and width of at least 1"):
                bilinear_resize_forward(empty, 3, align_corners=False, method=method)
    with pytest.raises(ValueError, match="size"):
        bilinear_resize_forward(x, (0, 8), align_corners=True)
    with pytest.raises(ValueError, match="size"):
        bilinear_resize_forward(x, (8, 8, 8), align_corners=True)
    with pytest.raises(TypeError, match="size"):
        bilinear_resize_forward(x, 8.0, align_corners=True)
    with pytest.raises(ValueError, match="method must be one of"):
        bilinear_resize_forward(x, 8, align_corners=True, method="fast")
    out, cache = bilinear_resize_forward(x, (8, 8), align_corners=True)
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        bilinear_resize_backward(np.zeros((1, 2, 8, 7), np.float32), cache)
    with pytest.raises(TypeError, match="dout must have the forward output's dtype"):
        bilinear_resize_backward(np.zeros((1, 2, 8, 8), np.float64), cache)


@pytest.mark.cudasim
@pytest.mark.parametrize("align_corners", [True, False])
def test_cuda_width_pass_matches_the_cpu_kernels(align_corners, rng):
    """The @cuda.jit twins of the width pass, launched on NumPy arrays (CUDA simulator)."""
    t = rng.standard_normal((6, 7)).astype(np.float32)
    out, width = interp._numba_forward(t, 19, align_corners)
    lo, hi, frac = interp.interpolation_taps(19, 7, align_corners)
    gout = np.empty_like(out)
    interp._lerp_cuda(t, lo, hi, frac.astype(np.float32), gout)
    np.testing.assert_allclose(gout, out, rtol=1e-6, atol=1e-6)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    gdt = np.empty_like(t)
    interp._lerp_backward_cuda(dout, *width, gdt)
    np.testing.assert_allclose(gdt, interp._numba_backward(dout, width, 7), rtol=1e-6, atol=1e-6)


# ---- label subsampling -------------------------------------------------------------------

def test_downsample_by_factor_takes_every_fth_pixel_from_the_first(rng):
    labels = rng.integers(0, 21, size=(2, 321, 300)).astype(np.uint8)
    labels[:, 100:140, 50:90] = 255
    small = downsample_labels(labels, 8)
    assert small.shape == (2, 41, 38) and small.dtype == np.uint8
    np.testing.assert_array_equal(small, labels[:, ::8, ::8])
    assert (small == 255).any()
    assert set(np.unique(small)) <= set(np.unique(labels))


@pytest.mark.parametrize("h", [321, 320, 513, 9, 8, 1])
def test_factor_8_gives_the_size_of_three_stride_2_pools(h):
    """ceil(H / 8): the size of DeepLab-VGG's stride-8 score map (3×3, stride 2, pad 1 pools)."""
    from minilab.ops.pool import max_pool2d_forward
    x = np.zeros((1, 1, h, 3), dtype=np.float32)
    for _ in range(3):
        x, _ = max_pool2d_forward(x, 3, 2, 1)
    assert downsample_labels(np.zeros((h, 3), np.int64), 8).shape[0] == x.shape[2] == -(-h // 8)


def test_downsample_by_size_is_nearest_on_the_aligned_grid(rng):
    labels = rng.integers(0, 5, size=(33, 17))
    np.testing.assert_array_equal(downsample_labels(labels, size=(5, 9)), labels[::8, ::2])
    out = downsample_labels(labels, size=(4, 1))
    rows = [int(np.floor(i * 32 / 3 + 0.5)) for i in range(4)]  # 0, 11, 21, 32
    np.testing.assert_array_equal(out[:, 0], labels[rows, 0])
    assert downsample_labels(labels, size=(1, 1))[0, 0] == labels[0, 0]
    up = downsample_labels(labels[:3, :3], size=(5, 5))  # also upsamples, by repetition
    np.testing.assert_array_equal(up[::2, ::2], labels[:3, :3])


def test_downsample_labels_bad_inputs():
    labels = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(TypeError, match="integer"):
        downsample_labels(labels.astype(np.float32), 2)
    with pytest.raises(ValueError, match="exactly one"):
        downsample_labels(labels)
    with pytest.raises(ValueError, match="exactly one"):
        downsample_labels(labels, 2, size=4)
    with pytest.raises(ValueError, match="factor"):
        downsample_labels(labels, 0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        downsample_labels(labels[0], 2)
    with pytest.raises(ValueError, match="H, W >= 1"):
        downsample_labels(labels[..., :0], size=2)
    with pytest.raises(TypeError, match="labels must be a NumPy"):
        downsample_labels([[1, 2]], 2)


@pytest.mark.gpu
def test_cupy_matches_numpy(rng):
    cp = backend.cupy
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    for align_corners, method in [(True, "matmul"), (False, "matmul"), (True, "numba"), (False, "numba")]:
        out, cache = bilinear_resize_forward(x, (20, 5), align_corners=align_corners)
        gout, gcache = bilinear_resize_forward(cp.asarray(x), (20, 5), align_corners=align_corners,
                                               method=method)
        np.testing.assert_allclose(cp.asnumpy(gout), out, rtol=1e-5, atol=1e-5)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        np.testing.assert_allclose(cp.asnumpy(bilinear_resize_backward(cp.asarray(dout), gcache)),
                                   bilinear_resize_backward(dout, cache), rtol=1e-5, atol=1e-5)
    labels = rng.integers(0, 21, size=(2, 33, 30))
    np.testing.assert_array_equal(cp.asnumpy(downsample_labels(cp.asarray(labels), size=(5, 4))),
                                  downsample_labels(labels, size=(5, 4)))


def test_downsample_labels_returns_a_copy_and_rounds_halves_up():
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out = downsample_labels(labels, 2)
    out[...] = 255
    assert labels.tolist() == np.arange(16).reshape(4, 4).tolist()
    # columns 0, 1.5, 3 on the aligned grid: 1.5 rounds half up to 2
    assert downsample_labels(labels, size=(1, 3)).tolist() == [[0, 2, 3]]
    assert downsample_labels(labels, size=(3, 1)).tolist() == [[0], [8], [12]]
