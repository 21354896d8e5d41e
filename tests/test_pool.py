"""Max pooling: a loop reference, torch's max_pool2d (both size rules), ties, gradient
checks, bad inputs."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minilab import backend, validate
from minilab.gradcheck import numerical_gradient, relative_error
from minilab.ops import pool
from minilab.ops.pool import METHODS, max_pool2d_backward, max_pool2d_forward

# (kernel, stride, padding): DeepLab-VGG's two pools, a plain 2×2 one, non-square ones
CONFIGS = [(3, 2, 1), (3, 1, 1), (2, 2, 0), ((3, 2), (2, 1), (1, 0)), (4, 3, 2), (1, 1, 0)]


def loop_pool(x, kernel, stride, padding, ceil_mode, dout):
    """Window by window; returns the output and the gradient of sum(out * dout)."""
    (kh, kw), (sh, sw), (ph, pw) = [(v, v) if np.isscalar(v) else v for v in (kernel, stride, padding)]
    n, c, h, w = x.shape

    def size(length, k, s, p):
        span = length + 2 * p - k
        if not ceil_mode:
            return max(span // s + 1, 0)
        o = int(np.ceil(span / s)) + 1
        return max(o - 1 if (o - 1) * s >= length + p else o, 0)

    ho, wo = size(h, kh, sh, ph), size(w, kw, sw, pw)
    out = np.zeros((n, c, ho, wo))
    dx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    best, where = None, None  # the first maximum; a NaN beats any number
                    for a in range(kh):
                        for bb in range(kw):
                            r, q = i * sh - ph + a, j * sw - pw + bb
                            if 0 <= r < h and 0 <= q < w and (
                                    where is None or x[b, ch, r, q] > best
                                    or (np.isnan(x[b, ch, r, q]) and not np.isnan(best))):
                                best, where = x[b, ch, r, q], (r, q)
                    out[b, ch, i, j] = best
                    dx[b, ch, where[0], where[1]] += dout[b, ch, i, j]
    return out, dx


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS)
def test_matches_loop_reference(kernel, stride, padding, ceil_mode, method, rng):
    x = rng.standard_normal((2, 3, 9, 10))
    out, cache = max_pool2d_forward(x, kernel, stride, padding, ceil_mode=ceil_mode, method=method)
    dout = rng.standard_normal(out.shape)
    ref_out, ref_dx = loop_pool(x, kernel, stride, padding, ceil_mode, dout)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(max_pool2d_backward(dout, cache), ref_dx, rtol=1e-14, atol=1e-14)


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 11), w=st.integers(1, 11), k=st.integers(1, 4), s=st.integers(1, 3),
       p=st.integers(0, 2), ceil_mode=st.booleans(), levels=st.sampled_from([3, 1000]),
       special=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes_and_ties_match_loop_reference(h, w, k, s, p, ceil_mode, levels, special, seed):
    p = min(p, k // 2)
    g = np.random.default_rng(seed)
    x = g.integers(0, levels, size=(1, 2, h, w)).astype(np.float64)  # levels=3: many ties
    if special:  # NaN and -inf, as inside a diverging network (where the finite scans are off)
        x[g.random(x.shape) < 0.2] = np.nan
        x[g.random(x.shape) < 0.3] = -np.inf
        x[g.random(x.shape) < 0.1] = np.inf  # with -inf in a window, a sum of NaN without a NaN
    dout = g.standard_normal((1, 2, h + 2 * p, w + 2 * p))  # at least as big as the output
    ref_out, ref_dx = loop_pool(x, k, s, p, ceil_mode, dout)
    if 0 in ref_out.shape:
        return
    dout = dout[:, :, :ref_out.shape[2], :ref_out.shape[3]]
    for method in METHODS:
        with validate.finite_scans_off():
            out, cache = max_pool2d_forward(x, k, s, p, ceil_mode=ceil_mode, method=method)
        np.testing.assert_array_equal(out, ref_out)
        np.testing.assert_allclose(max_pool2d_backward(dout, cache), ref_dx, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS)
def test_matches_torch(kernel, stride, padding, ceil_mode, method, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 12, 11)).astype(np.float32)
    out, cache = max_pool2d_forward(x, kernel, stride, padding, ceil_mode=ceil_mode, method=method)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(out, ty.detach().numpy())
    dout = rng.standard_normal(out.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(max_pool2d_backward(dout, cache), tx.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS[:3])
def test_gradient_check(kernel, stride, padding, method, rng):
    x = rng.permutation(2 * 2 * 7 * 8).reshape(2, 2, 7, 8) / 224.0  # distinct: no ties
    out, cache = max_pool2d_forward(x, kernel, stride, padding, method=method)
    dout = rng.standard_normal(out.shape)
    num = numerical_gradient(lambda: max_pool2d_forward(x, kernel, stride, padding, method=method)[0], x, dout)
    assert relative_error(max_pool2d_backward(dout, cache), num) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_ties_go_to_the_first_pixel_and_padding_never_wins(method):
    x = -np.ones((1, 1, 3, 3), dtype=np.float32)  # all equal, all below the padding's 0
    out, cache = max_pool2d_forward(x, 3, 3, 1, method=method)
    np.testing.assert_array_equal(out, -1)
    dx = max_pool2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx, [[[[1, 0, 0], [0, 0, 0], [0, 0, 0]]]])


@pytest.mark.parametrize("method", METHODS)
def test_nan_wins_and_minus_infinity_beats_padding(method):
    x = np.array([[[[1.0, np.nan], [np.nan, 3.0]], [[-np.inf, -np.inf], [-np.inf, -np.inf]]]])
    with validate.finite_scans_off():  # as inside a network
        out, cache = max_pool2d_forward(x, 2, 1, 1, method=method)
    np.testing.assert_array_equal(out[0, 0], [[1, np.nan, np.nan], [np.nan, np.nan, np.nan], [np.nan, np.nan, 3]])
    np.testing.assert_array_equal(out[0, 1], -np.inf)
    dx = max_pool2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx[0, 0], [[1, 4], [3, 1]])  # the first NaN of each window
    np.testing.assert_array_equal(dx[0, 1], [[4, 2], [2, 1]])  # the first pixel inside x


@pytest.mark.parametrize("method", METHODS)
def test_ceil_mode_takes_an_input_smaller_than_the_kernel(method):
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    out, cache = max_pool2d_forward(x, 4, 3, 0, ceil_mode=True, method=method)  # torch and Caffe: 1×1
    np.testing.assert_array_equal(out, [[[[5]]]])
    np.testing.assert_array_equal(max_pool2d_backward(np.ones_like(out), cache), [[[[0, 0, 0], [0, 0, 1]]]])


@pytest.mark.parametrize("h", [321, 320, 41, 2, 1])
def test_deeplab_vgg_pool_sizes(h):
    x = np.zeros((1, 1, h, h), dtype=np.float32)
    assert max_pool2d_forward(x, 3, 1, 1)[0].shape[2] == h                      # pool4, pool5
    assert max_pool2d_forward(x, 3, 2, 1)[0].shape[2] == (h + 1) // 2            # pool1-3
    assert max_pool2d_forward(x, 3, 2, 1, ceil_mode=True)[0].shape[2] == h // 2 + 1  # Caffe


def test_bad_inputs():
    x = np.zeros((1, 2, 5, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="padding must be at most half"):
        max_pool2d_forward(x, 3, 1, 2)
    with pytest.raises(ValueError, match="kernel"):
        max_pool2d_forward(x, 0)
    with pytest.raises(ValueError, match="stride"):
        max_pool2d_forward(x, 2, 0)
    with pytest.raises(ValueError, match="padding"):
        max_pool2d_forward(x, 2, 1, -1)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        max_pool2d_forward(x, 6)
    with pytest.raises(TypeError, match="ceil_mode"):
        max_pool2d_forward(x, 2, ceil_mode=1)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        max_pool2d_forward(x[0], 2)
    with pytest.raises(ValueError, match="method must be one of"):
        max_pool2d_forward(x, 2, method="fast")
    with pytest.raises(ValueError, match="NaN"):
        max_pool2d_forward(np.full_like(x, np.nan), 2)
    out, cache = max_pool2d_forward(x, 2)
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        max_pool2d_backward(np.zeros((1, 2, 3, 3), np.float32), cache)
    with pytest.raises(TypeError, match="dout must have the forward output's dtype"):
        max_pool2d_backward(np.zeros(out.shape, np.float64), cache)


@pytest.mark.parametrize("ceil_mode", [np.True_, np.False_])
def test_ceil_mode_takes_a_numpy_bool(ceil_mode):
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    got, want = max_pool2d_forward(x, 3, 2, ceil_mode=ceil_mode), max_pool2d_forward(x, 3, 2, ceil_mode=bool(ceil_mode))
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("method", METHODS)
def test_a_window_of_2_to_the_31_offsets_is_refused_naming_the_kernel(method):
    """The winner's offset a·kw + b is kept as int32: past 2**31 - 1 it wrapped, and the
    backward sent the gradient outside dx (a segfault)."""
    x = np.array([0.0, 5.0]).reshape(1, 1, 2, 1)
    for kernel, padding in (((2, 3 * 2**30), (0, 3 * 2**29)), ((2**16, 2**15), (2**15, 2**14))):
        with pytest.raises(ValueError, match=r"kernel must have kh·kw <= 2147483647 offsets"):
            max_pool2d_forward(x, kernel, padding=padding, method=method)
    if method == "numba":  # "xp" would loop over the 2**31 - 2 offsets of a window allowed
        out, cache = max_pool2d_forward(x, (2, 2**30 - 1), padding=(0, 2**29 - 1), method=method)
        np.testing.assert_array_equal(out, [[[[5.0]]]])
        np.testing.assert_array_equal(max_pool2d_backward(np.ones_like(out), cache), [[[[0.0], [1.0]]]])


@pytest.mark.parametrize("stride", [2**31, 2**63, (1, 2**64)])
def test_a_stride_past_int32_is_refused_naming_it(stride):
    with pytest.raises(ValueError, match="stride must be <= 2147483647"):
        max_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, stride)


def test_non_contiguous_input(rng):
    x = rng.standard_normal((3, 2, 9, 8)).transpose(1, 0, 3, 2)  # a view, not C-ordered
    out, cache = max_pool2d_forward(x, 3, 2, 1)
    ref, ref_cache = max_pool2d_forward(np.ascontiguousarray(x), 3, 2, 1, method="xp")
    np.testing.assert_array_equal(out, ref)
    dout = rng.standard_normal(out.shape)[..., ::-1]  # a reversed view
    np.testing.assert_allclose(max_pool2d_backward(dout, cache), max_pool2d_backward(dout, ref_cache),
                               rtol=1e-14)  # overlapping windows: sums in another order


@pytest.mark.cudasim
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (3, 1, 1), ((3, 2), (2, 1), (1, 0))])
def test_cuda_kernels_match_the_cpu_kernels(kernel, stride, padding, rng):
    """The @cuda.jit twins, launched on NumPy arrays (CUDA simulator) or on a real GPU."""
    x = rng.integers(0, 4, size=(2, 2, 9, 8)).astype(np.float32)  # ties included
    x[0, 0, 2:4, 3], x[1, 1] = np.nan, -np.inf
    with validate.finite_scans_off():
        out, (_, arg, _, _, geometry) = max_pool2d_forward(x, kernel, stride, padding)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = max_pool2d_backward(dout, ("numba", arg, x.shape, x.dtype, geometry))
    planes = x.reshape(4, 9, 8)
    gout, garg = np.empty((4,) + out.shape[2:], np.float32), np.empty((4,) + out.shape[2:], np.int32)
    pool._forward_cuda(planes, *geometry, gout, garg)
    np.testing.assert_array_equal(gout, out.reshape(gout.shape))
    np.testing.assert_array_equal(garg, arg.reshape(garg.shape))
    gdx = np.empty((4, 9, 8), np.float32)
    pool._backward_cuda(dout.reshape(gout.shape), garg, *geometry, gdx)
    np.testing.assert_allclose(gdx, dx.reshape(gdx.shape), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_cupy_matches_numpy(method, rng):
    cp = backend.cupy
    x = rng.standard_normal((2, 3, 13, 12)).astype(np.float32)
    for kernel, stride, padding in CONFIGS:
        out, cache = max_pool2d_forward(x, kernel, stride, padding)
        gout, gcache = max_pool2d_forward(cp.asarray(x), kernel, stride, padding, method=method)
        np.testing.assert_array_equal(cp.asnumpy(gout), out)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        np.testing.assert_allclose(cp.asnumpy(max_pool2d_backward(cp.asarray(dout), gcache)),
                                   max_pool2d_backward(dout, cache), rtol=1e-6, atol=1e-6)
