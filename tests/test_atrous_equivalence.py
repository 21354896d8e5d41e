"""Every pair of registered atrous methods gives the same forward and backward on random
shapes, rates 1..24, paddings, strides and both float dtypes."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minilab.ops import atrous
from minilab.ops.atrous import METHODS, atrous_conv2d_backward, atrous_conv2d_forward, unsupported


@st.composite
def problems(draw):
    rate = draw(st.integers(1, 24))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    # enough padding that the (kh-1)*rate+1 window fits, plus a little more
    ph = max(0, -(-((kh - 1) * rate + 1 - h) // 2)) + draw(st.integers(0, 3))
    pw = max(0, -(-((kw - 1) * rate + 1 - w) // 2)) + draw(st.integers(0, 3))
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), f=draw(st.integers(1, 3)),
                h=h, w=w, kh=kh, kw=kw, rate=rate, padding=(ph, pw),
                stride=draw(st.sampled_from([1, 1, 2, 3])), bias=draw(st.booleans()),
                dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 2**16)))


def run_all(p):
    """Forward and backward of every applicable method on the problem ``p``."""
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal((p["n"], p["c"], p["h"], p["w"])).astype(p["dtype"])
    w = rng.standard_normal((p["f"], p["c"], p["kh"], p["kw"])).astype(p["dtype"])
    b = rng.standard_normal(p["f"]).astype(p["dtype"]) if p["bias"] else None
    results, dout = {}, None
    for name in METHODS:
        if unsupported(name, (p["kh"], p["kw"]), p["rate"], p["stride"]):
            continue
        out, cache = atrous_conv2d_forward(x, w, b, rate=p["rate"], stride=p["stride"],
                                           padding=p["padding"], method=name)
        if dout is None:
            dout = rng.standard_normal(out.shape).astype(p["dtype"])
        results[name] = (out,) + atrous_conv2d_backward(dout, cache)
    return results


@settings(max_examples=40, deadline=None)
@given(problems())
def test_every_pair_of_methods_agrees(p):
    results = run_all(p)
    assert len(results) >= 3
    tol = 2e-4 if p["dtype"] == np.float32 else 1e-11
    for (a, ra), (b, rb) in itertools.combinations(results.items(), 2):
        for what, ga, gb in zip(("out", "dx", "dw", "db"), ra, rb):
            if ga is None:
                assert gb is None and not p["bias"]
                continue
            assert ga.dtype == gb.dtype == p["dtype"], (a, b, what)
            scale = max(1.0, float(np.abs(ga).max()))
            np.testing.assert_allclose(ga, gb, rtol=tol, atol=tol * scale, err_msg=f"{a} vs {b}: {what}")


@pytest.mark.parametrize("rate", [1, 6, 12])
def test_methods_agree_on_a_deeplab_like_layer(rate, rng):
    """A wider case: 8 channels, 3×3, 'same' padding = rate, as in ASPP."""
    p = dict(n=1, c=8, f=8, h=27, w=25, kh=3, kw=3, rate=rate, padding=rate, stride=1,
             bias=True, dtype=np.float64, seed=rate)
    results = run_all(p)
    for name, r in results.items():
        for ga, gb in zip(r, results["direct"]):
            np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-10, err_msg=name)


@st.composite
def winograd_problems(draw):
    """3×3 kernels at stride 1, the ones Winograd's F(2×2, 3×3) takes, at rates 1-4 (tiles on
    the dilated grid): odd and even sizes (a last tile cut by the edge, residues with fewer
    outputs than others), unequal and zero paddings, batches."""
    rate = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    ph = max(0, -(-(2 * rate + 1 - h) // 2)) + draw(st.integers(0, 2))
    pw = max(0, -(-(2 * rate + 1 - w) // 2)) + draw(st.integers(0, 2))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 5)), f=draw(st.integers(1, 5)),
                h=h, w=w, kh=3, kw=3, rate=rate, padding=(ph, pw), stride=1, bias=draw(st.booleans()),
                dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None)
@given(winograd_problems())
def test_winograd_agrees_with_the_direct_sum(p):
    results = run_all(p)
    assert "winograd" in results
    tol = 2e-5 if p["dtype"] == np.float32 else 1e-12
    for what, ga, gb in zip(("out", "dx", "dw", "db"), results["winograd"], results["direct"]):
        if ga is not None:
            scale = max(1.0, float(np.abs(gb).max()))
            np.testing.assert_allclose(ga, gb, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("rate, side", [(40, 8), (5, 9), (3, 7)])
def test_winograd_builds_only_the_tiles_that_hold_outputs(rate, side, rng):
    """At a rate of the output's size or more each residue has one output: one tile per
    output, not rate² tiles (rate 300 on 8×8 took 3000 times shifted's time, and 350 MiB);
    below it, no last tile starts past the edge. Forward and backward still agree with direct."""
    x, w = rng.standard_normal((2, 3, side, side)), rng.standard_normal((4, 3, 3, 3))
    y, cache = atrous_conv2d_forward(x, w, rate=rate, padding=rate, method="winograd")
    rows = cache[1][-2]
    assert rows.tolist() == [s + 2 * rate * k for k in range(side) for s in range(rate)
                             if s + 2 * rate * k < side]
    assert cache[1][2].shape == (16, 3, 2 * rows.size ** 2)  # the transformed tiles kept
    y_ref, cache_ref = atrous_conv2d_forward(x, w, rate=rate, padding=rate, method="direct")
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(atrous_conv2d_backward(dy, cache)[:2], atrous_conv2d_backward(dy, cache_ref)[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_winograd_range_is_the_documented_one():
    """Finite up to |x|, |dy| = max/4 and |w| = max/4.5 (float32's max), NaN just above,
    where shifted stays finite: the bounds winograd's docstring states."""
    top = float(np.finfo(np.float32).max)
    checker = np.tile(np.float32([[1, -1], [-1, 1]]), (4, 4))[None, None]  # V adds 4 pixels of one sign
    small_x, small_w = np.full((1, 1, 8, 8), 1e-3, np.float32), np.full((1, 1, 3, 3), 1e-3, np.float32)

    def finite(x, w, dy_scale, method):
        y, cache = atrous_conv2d_forward(x, w, padding=1, method=method)
        grads = atrous_conv2d_backward((checker * dy_scale).astype(np.float32), cache)[:2]
        return [bool(np.isfinite(a).all()) for a in (y, *grads)]

    with np.errstate(over="ignore", invalid="ignore"):
        for bound, args in ((4, lambda v: (checker * v, small_w, 1e-3)),    # x
                            (4.5, lambda v: (small_x, np.full_like(small_w, v), 1e-3)),  # w
                            (4, lambda v: (small_x, small_w, v))):           # dy
            inside, outside = (args(np.float32(top / f)) for f in (bound, bound * 0.97))
            assert all(finite(*inside, "winograd")) and all(finite(*outside, "shifted"))
            assert not all(finite(*outside, "winograd"))


@pytest.mark.parametrize("stride", [1, 2])
def test_blocked_im2col_gives_the_unblocked_result(stride, rng, monkeypatch):
    """With a tiny block budget every output row is its own im2col block and GEMM."""
    p = dict(n=2, c=3, f=4, h=11, w=9, kh=3, kw=3, rate=2, padding=2, stride=stride,
             bias=True, dtype=np.float64, seed=stride)
    whole = run_all(p)
    monkeypatch.setattr(atrous, "_BLOCK_BYTES", {"cpu": 1, "gpu": 1})
    assert len(atrous._blocks(np.zeros((2, 3, 15, 13)), 27, 7, 5)[0]) == 14
    blocked = run_all(p)
    for name in whole:
        for ga, gb in zip(whole[name], blocked[name]):
            np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-12, err_msg=name)


def test_shifted_with_tap_rows_of_only_padding_and_one_row_per_group(rng, monkeypatch):
    """A 4×3 kernel at rate 2 with padding 3 on 3 rows: tap rows 0 and 3 read only padding,
    and with one tap row per group they form no group, so nothing writes their rows of dw but
    the zeros they start from; the first group (tap row 1) reads only rows 0:2 of x, so dx
    is not all written by its GEMM either."""
    monkeypatch.setattr(atrous, "_BLOCK_BYTES", {"cpu": 1, "gpu": 1})
    x, w = rng.standard_normal((2, 2, 3, 5)), rng.standard_normal((3, 2, 4, 3))
    y, cache = atrous_conv2d_forward(x, w, rate=2, padding=(3, 2), method="shifted")
    assert cache[1][-1] == [(1, 2, 0, 2), (2, 3, 1, 3)]  # the groups (u0, u1, a0, a1)
    y_ref, cache_ref = atrous_conv2d_forward(x, w, rate=2, padding=(3, 2), method="direct")
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for _ in range(3):
        np.full(w.size, 7.0), np.full(x.size, 7.0)  # freed: NumPy's cache may hand them out uninitialised
        got, want = atrous_conv2d_backward(dy, cache)[:2], atrous_conv2d_backward(dy, cache_ref)[:2]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert not got[1][:, :, [0, 3]].any() and got[1][:, :, 1:3].all()


def test_winograd_layers_interleaved_share_work_buffers_safely(rng):
    """A network runs every layer's forward, then every backward in reverse: Winograd's
    per-thread work buffers (grown, shrunk views, reused) must not leak one layer into another."""
    shapes = [(2, 3, 9, 8, 5), (1, 6, 17, 15, 4), (2, 4, 5, 6, 6)]  # N, C, H, W, F: a big one between small ones
    layers = []
    for n, c, h, w, f in shapes:
        x, k = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, 3, 3))
        layers.append((x, k, atrous_conv2d_forward(x, k, padding=1, method="winograd"),
                       atrous_conv2d_forward(x, k, padding=1, method="direct")))
    for x, k, (y, cache), (y_ref, cache_ref) in reversed(layers):
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y.shape)
        for got, want in zip(atrous_conv2d_backward(dy, cache)[:2], atrous_conv2d_backward(dy, cache_ref)[:2]):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride, padding", [(2, 0), (3, 0), (2, 1)])
def test_strided_1x1_kernels_agree_with_the_direct_sum(stride, padding, rng):
    """A ResNet's downsampling shortcut: the 1×1 fast path is for stride 1 only. A gradient
    check cannot see a forward that ignores the stride (its backward would match it)."""
    x, w, b = rng.standard_normal((2, 3, 7, 8)), rng.standard_normal((4, 3, 1, 1)), rng.standard_normal(4)
    expected, cache = atrous_conv2d_forward(x, w, b, stride=stride, padding=padding, method="direct")
    dout = rng.standard_normal(expected.shape)
    grads = atrous_conv2d_backward(dout, cache)
    for name in METHODS:
        if unsupported(name, (1, 1), 1, stride):
            continue
        out, cache = atrous_conv2d_forward(x, w, b, stride=stride, padding=padding, method=name)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12, err_msg=name)
        for got, want in zip(atrous_conv2d_backward(dout, cache), grads):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_deinterlace_of_a_1x1_kernel_splits_nothing(rng):
    """One tap is spaced by nothing: at rate 10⁶ deinterlace built 10¹² sub-images ("array is
    too big"); it gives the ordinary 1×1 convolution."""
    x, w = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 1, 1))
    out, cache = atrous_conv2d_forward(x, w, rate=10**6, method="deinterlace")
    expected, expected_cache = atrous_conv2d_forward(x, w, method="direct")
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(atrous_conv2d_backward(dout, cache)[:2], atrous_conv2d_backward(dout, expected_cache)[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rate, stride, padding", [(1, 3, 2), (2, 3, 2), (1, 2, 1)])
def test_shifted_tap_groups_read_from_their_lowest_input_row(rate, stride, padding, rng):
    """At a stride above 1 the first input row a tap reads is not monotone in the tap: with
    stride 3, rate 1 and padding 2, tap rows 0, 1, 2 start reading at rows 1, 2, 0. A group
    of several tap rows must read from the lowest of them."""
    x, w = rng.standard_normal((2, 2, 11, 10)), rng.standard_normal((3, 2, 3, 3))
    y, cache = atrous_conv2d_forward(x, w, rate=rate, stride=stride, padding=padding, method="shifted")
    expected, expected_cache = atrous_conv2d_forward(x, w, rate=rate, stride=stride, padding=padding, method="direct")
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(atrous_conv2d_backward(dy, cache)[:2], atrous_conv2d_backward(dy, expected_cache)[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
