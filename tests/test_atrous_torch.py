"""Atrous convolution against PyTorch's conv2d(dilation=rate), forward and backward
(skipped where torch is not installed)."""
import numpy as np
import pytest

from minilab.ops.atrous import METHODS, atrous_conv2d_backward, atrous_conv2d_forward, unsupported

torch = pytest.importorskip("torch")

CASES = [  # N, C, H, W, F, k, rate, stride, padding
    (2, 4, 17, 15, 5, 3, 2, 1, 2),
    (1, 3, 20, 20, 4, 3, 6, 1, (6, 3)),
    (2, 2, 13, 16, 3, 2, 3, 2, 1),
    (1, 8, 33, 33, 6, 3, 12, 1, 12),
    (1, 2, 9, 9, 2, 1, 7, 3, 0),
]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_conv2d_forward_and_backward(method, case, dtype, rng):
    n, c, h, w_, f, k, rate, stride, padding = case
    if unsupported(method, (k, k), rate, stride):
        with pytest.raises(ValueError, match="stride"):
            atrous_conv2d_forward(np.zeros((n, c, h, w_), dtype), np.zeros((f, c, k, k), dtype),
                                  rate=rate, stride=stride, method=method)
        return
    x = rng.standard_normal((n, c, h, w_)).astype(dtype)
    w = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    out, cache = atrous_conv2d_forward(x, w, b, rate=rate, stride=stride, padding=padding, method=method)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, dw, db = atrous_conv2d_backward(dout, cache)

    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    pad = padding if isinstance(padding, tuple) else (padding, padding)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=pad, dilation=rate)
    yt.backward(torch.tensor(dout))
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for ours, theirs in [(out, yt), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)]:
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * max(1.0, np.abs(theirs).max()))
