"""Dense CRF: features, one mean-field step against a dense-matrix reference, options, bad inputs."""
import numpy as np
import pytest

from crf_helpers import photo

from minilab import crf
from minilab.crf import lattice, naive


def _image(rng, h=6, w=5):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _probs(rng, c, h, w, dtype=np.float32):
    p = rng.dirichlet(np.ones(c), size=(h, w)).transpose(2, 0, 1)
    return p.astype(dtype)


def test_features_are_scaled_positions_and_colours():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    f = crf.bilateral_features(image, 2.0, 4.0)
    assert f.shape == (6, 5) and f.dtype == np.float32
    # pixel n = row * W + column; x is the column
    np.testing.assert_array_equal(f[4, :2], [1 / 2.0, 1 / 2.0])
    np.testing.assert_array_equal(f[5, :2], [2 / 2.0, 1 / 2.0])
    np.testing.assert_array_equal(f[5, 2:], image[1, 2].astype(np.float32) / np.float32(4.0))
    s = crf.spatial_features((2, 3), 3.0)
    np.testing.assert_array_equal(s, f[:, :2] * np.float32(2.0) / np.float32(3.0))


def _dense_step(image, probs, q, w1, sa, sb, w2, sg, normalization, include_self):
    """The update written with explicit N×N kernel matrices (float64)."""
    c, h, w = probs.shape
    rows, cols = np.mgrid[0:h, 0:w]
    pos = np.stack([cols.ravel(), rows.ravel()], 1).astype(np.float64)
    rgb = image.reshape(-1, image.shape[2]).astype(np.float64)
    d2 = lambda a: ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    kernels = [(w2, np.exp(-d2(pos) / (2 * sg**2))),
               (w1, np.exp(-d2(pos) / (2 * sa**2) - d2(rgb) / (2 * sb**2)))]
    energy = np.log(np.maximum(probs.reshape(c, -1).T.astype(np.float64), 1e-10))
    for weight, k in kernels:
        k1 = k.sum(1)
        if not include_self:  # the neighbours alone; a mass at most √ε·k(f_i, f_i) is none
            np.fill_diagonal(k, 0.0)
            k1 = k.sum(1)
            k1[k1 <= np.sqrt(np.finfo(np.float32).eps)] = np.inf
        if normalization == "symmetric":
            kq = k1[:, None] ** -0.5 * (k @ (k1[:, None] ** -0.5 * q))
        elif normalization == "after":
            kq = (k @ q) / k1[:, None]
        else:
            kq = k @ q
        energy += weight * kq
    e = np.exp(energy - energy.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("normalization", crf.NORMALIZATIONS)
@pytest.mark.parametrize("include_self", [True, False])
def test_naive_step_matches_dense_matrices(rng, normalization, include_self):
    image, probs = _image(rng), _probs(rng, 3, 6, 5)
    args = dict(w1=4.0, sa=3.0, sb=40.0, w2=3.0, sg=2.0)
    log_p = crf.log_probs(probs)
    q = crf.softmax_labels(log_p.copy())
    terms = [crf.PairwiseTerm(crf.spatial_features((6, 5), args["sg"]), args["w2"], "naive", normalization,
                              include_self),
             crf.PairwiseTerm(crf.bilateral_features(image, args["sa"], args["sb"]), args["w1"], "naive",
                              normalization, include_self)]
    got = crf.mean_field_step(q, log_p, terms)
    want = _dense_step(image, probs, q.astype(np.float64), normalization=normalization,
                       include_self=include_self, **args)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # and dense_crf with one iteration is that step
    full = crf.dense_crf(image, probs, iterations=1, w1=4.0, sigma_alpha=3.0, sigma_beta=40.0, w2=3.0,
                         sigma_gamma=2.0, method="naive", normalization=normalization, include_self=include_self)
    np.testing.assert_allclose(full.reshape(3, -1).T, want, atol=2e-6)


@pytest.mark.parametrize("method", sorted(crf.METHODS))
def test_dense_crf_returns_a_distribution(rng, method):
    image, probs = _image(rng, 12, 10), _probs(rng, 4, 12, 10, np.float64)
    q = crf.dense_crf(image, probs, w1=5, sigma_alpha=10, sigma_beta=5, method=method)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    assert (q >= 0).all()
    q0 = crf.dense_crf(image, probs, iterations=0, w1=5, sigma_alpha=10, sigma_beta=5, method=method)
    np.testing.assert_allclose(q0, probs, atol=1e-6)


def test_zero_iterations_return_the_start():
    """Q₀ = softmax(log max(P, 1e-10)): a zero lifted to 1e-10, a pixel off by 4e-4 renormalised."""
    probs = np.array([[[1.0, 0.5]], [[0.0, 0.5004]]], np.float32)
    q0 = crf.dense_crf(np.zeros((1, 2, 3), np.uint8), probs, iterations=0, **GOOD)
    floored = np.maximum(probs.astype(np.float64), 1e-10)
    np.testing.assert_allclose(q0, floored / floored.sum(0), rtol=1e-6)


def test_crf_smooths_towards_the_image(rng):
    """Two flat colour regions, unaries that are right only by a small margin with noise:
    the CRF labels each region by its colour."""
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, 8:] = 200
    truth = (np.arange(16)[None, :] >= 8).repeat(16, 0)
    logits = np.stack([1.0 - truth, truth.astype(float)]) * 0.6 + rng.normal(0, 1.0, (2, 16, 16))
    p = np.exp(logits) / np.exp(logits).sum(0)
    before = (p.argmax(0) == truth).mean()
    q = crf.dense_crf(image, p, w1=10, sigma_alpha=20, sigma_beta=10)
    assert before < 0.9 and (crf.map_labels(q) == truth).all()


def test_float_feature_images_with_any_channel_count(rng):
    feats = rng.random((10, 9, 4))
    probs = _probs(rng, 3, 10, 9)
    for method in crf.METHODS:
        q = crf.dense_crf(feats, probs, w1=3, sigma_alpha=5, sigma_beta=0.5, method=method)
        np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)


def test_map_labels(rng):
    q = _probs(rng, 5, 4, 3)
    np.testing.assert_array_equal(crf.map_labels(q), q.argmax(0))


def test_gaussian_filter_far_points_do_not_interact():
    """Points 30σ apart: the exact filter is the identity and the lattice filters each
    point on its own (changing one value changes that point's output alone)."""
    f = np.array([[0.0, 0.0], [0.0, 30.0], [30.0, 0.0]], np.float32)
    v = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(crf.gaussian_filter(f, v, method="naive"), v, rtol=1e-6)
    out = crf.gaussian_filter(f, v)
    assert out.shape == v.shape and (out > 0).all()
    changed = crf.gaussian_filter(f, v * np.array([1, 5, 1], np.float32))
    np.testing.assert_array_equal(changed[[0, 2]], out[[0, 2]])
    np.testing.assert_allclose(changed[1], 5 * out[1], rtol=1e-6)


def test_sorted_and_hash_table_lattices_are_the_same(rng):
    # Both number vertices in order of first appearance, as the reference does.
    image = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    f = crf.bilateral_features(image, 6.0, 20.0)
    a = crf.LatticeFilter(f)
    offsets, keys, table = lattice._build_hash_table(*_embedding(f))
    np.testing.assert_array_equal(offsets, a.offsets)
    np.testing.assert_array_equal(lattice._neighbours_cpu(table, keys), a.neighbours)


def _embedding(f):
    n, d = f.shape
    rem0, rank = np.empty((n, d + 1), np.int32), np.empty((n, d + 1), np.int32)
    lattice._embed_cpu(f, lattice.scale_factors(d), np.empty((n, d + 1), np.float32), rem0, rank,
                       np.empty((n, d + 2), np.float32))
    return rem0, rank


def test_embedding_weights_are_barycentric(rng):
    f = (rng.random((500, 5)) * 20).astype(np.float32)
    a = crf.LatticeFilter(f)
    np.testing.assert_allclose(a.weights.sum(1), 1.0, atol=1e-5)
    assert (a.weights > -1e-6).all()
    assert np.unique(a.offsets[0]).size == 6  # d+1 distinct vertices


@pytest.mark.parametrize("name, sa, sb", [("2007_000033", 10.0, 13.0), ("2007_000129", 6.0, 3.0)])
def test_lattice_self_weight_is_its_diagonal(name, sa, sb):
    """include_self=False on the lattice removes exactly the diagonal of the lattice's own
    kernel matrix, found here by filtering every one-hot vector."""
    image, _ = photo(name, size=(24, 18))
    for f in (crf.bilateral_features(image, sa, sb), crf.spatial_features((18, 24), 3.0)):
        eye = np.eye(f.shape[0], dtype=np.float32)
        k = crf.LatticeFilter(f)(eye)
        without = crf.LatticeFilter(f, include_self=False)
        np.testing.assert_allclose(without.self_weight, np.diag(k), atol=1e-6)
        assert 0.3 < np.diag(k).min() and np.diag(k).max() < 1  # not the exact kernel's k(f_i, f_i) = 1
        np.testing.assert_allclose(without(eye), k - np.diag(np.diag(k)), atol=1e-6)


@pytest.mark.parametrize("chunk", [naive.CHUNK_ELEMENTS, 2])  # the whole matrix; one row at a time
def test_exact_filter_without_self_sums_the_neighbours_alone(monkeypatch, chunk):
    """Two points 8.5 apart: each one's sum over j ≠ i is the other's value times
    exp(−8.5²/2) ≈ 2e-16, which subtracting v_i from the sum over all j lost (1 + 2e-16 − 1)."""
    monkeypatch.setattr(naive, "CHUNK_ELEMENTS", chunk)
    f = np.array([[0.0, 0.0], [8.5, 0.0]], np.float32)
    v = np.array([[0.3, 0.7], [0.9, 0.1]], np.float32)
    got = naive.ExactFilter(f, include_self=False)(v)
    np.testing.assert_allclose(got, np.exp(-0.5 * 8.5**2) * v[::-1], rtol=1e-6)


def _pair_messages(distance, method, normalization):
    """Messages of one term (w = 1) to two points ``distance`` apart, without themselves."""
    f = np.array([[0.0, 0.0], [distance, 0.0]], np.float32)
    q = np.array([[0.3, 0.7], [0.9, 0.1]], np.float32)
    return crf.PairwiseTerm(f, 1.0, method, normalization, include_self=False).message(q)


@pytest.mark.parametrize("method", sorted(crf.METHODS))
@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_pixels_without_neighbours_get_no_message(method, normalization):
    """Without itself, a pixel alone in feature space has a neighbour mass of zero (exact) or
    of rounding noise (the lattice's K1 − s_i): its normaliser is 0, not 1/noise (messages
    of 1e13 before), and its Q stays its unary's softmax."""
    image = np.array([[[10, 200, 30]]], np.uint8)
    probs = np.array([0.3, 0.7], np.float32).reshape(2, 1, 1)
    q = crf.dense_crf(image, probs, w1=5, sigma_alpha=50, sigma_beta=3, method=method,
                      normalization=normalization, include_self=False)
    np.testing.assert_allclose(q.ravel(), [0.3, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(_pair_messages(8.5, method, normalization), 0.0)


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_neighbour_floor_is_root_epsilon_of_the_self_weight(normalization):
    """The exact filter's neighbour mass exp(−d²/2) just above √ε·1 ≈ 3.45e-4 gives the
    normalised message (the other point's Q: K̃ is then a permutation), just below it none."""
    floor = np.sqrt(np.finfo(np.float32).eps)
    above, below = (np.sqrt(-2 * np.log(floor * k)) for k in (1.01, 0.99))
    np.testing.assert_allclose(_pair_messages(above, "naive", normalization), [[0.9, 0.1], [0.3, 0.7]], rtol=1e-5)
    np.testing.assert_array_equal(_pair_messages(below, "naive", normalization), 0.0)


GOOD = dict(w1=4.0, sigma_alpha=5.0, sigma_beta=5.0)


@pytest.mark.parametrize("change, error, match", [
    (lambda im, p, kw: (im, p * 1.5, kw), ValueError, "sum to 1"),
    (lambda im, p, kw: (im, np.where(p == p.min(), -0.01, p), kw), ValueError, ">= 0"),
    (lambda im, p, kw: (im, np.where(p > 0.3, np.nan, p), kw), ValueError, "NaN"),
    (lambda im, p, kw: (im, np.where(p > 0.3, np.inf, p), kw), ValueError, "NaN or infinity"),
    (lambda im, p, kw: (im[:5], p, kw), ValueError, "same pixels"),
    (lambda im, p, kw: (im, p.astype(np.int64), kw), TypeError, "float32 or float64"),
    (lambda im, p, kw: (im, p.tolist(), kw), TypeError, "NumPy or CuPy array"),
    (lambda im, p, kw: (im.astype(np.int16), p, kw), TypeError, "uint8"),
    (lambda im, p, kw: (im[..., 0], p, kw), ValueError, "H×W×3"),
    (lambda im, p, kw: (im, p[:1] / p[:1], kw), ValueError, "at least 2 labels"),
    (lambda im, p, kw: (im, p[0], kw), ValueError, "3 dimensions"),
    (lambda im, p, kw: (im, p, {**kw, "sigma_alpha": 0.0}), ValueError, "sigma_alpha"),
    (lambda im, p, kw: (im, p, {**kw, "sigma_beta": -1.0}), ValueError, "sigma_beta"),
    (lambda im, p, kw: (im, p, {**kw, "sigma_gamma": float("nan")}), ValueError, "sigma_gamma"),
    (lambda im, p, kw: (im, p, {**kw, "iterations": -1}), ValueError, "iterations"),
    (lambda im, p, kw: (im, p, {**kw, "iterations": 2.5}), TypeError, "iterations"),
    (lambda im, p, kw: (im, p, {**kw, "w1": float("inf")}), ValueError, "w1"),
    (lambda im, p, kw: (im, p, {**kw, "w2": "3"}), TypeError, "w2 must be a real number"),
    # 3e38 is a finite float32, but w·K̃Q overflowed to infinite energies and a Q of NaN
    (lambda im, p, kw: (im, p, {**kw, "w1": 3e38}), ValueError, "w1 must be at most 8388608"),
    (lambda im, p, kw: (im, p, {**kw, "w2": -2.0**23 - 1}), ValueError, "w2 must be at most"),
    (lambda im, p, kw: (im, p, {**kw, "include_self": "no"}), TypeError, "include_self must be True or False"),
    (lambda im, p, kw: (im[:0], p[:, :0], kw), ValueError, "at least one pixel"),
    (lambda im, p, kw: (im, p[:, :, :0], kw), ValueError, "at least 2 labels and one pixel"),
    # positions and colours divided by σ = 1e-30 overflow the lattice's coordinates
    (lambda im, p, kw: (im, p, {**kw, "sigma_alpha": 1e-30}), ValueError, "larger sigma"),
    (lambda im, p, kw: (im, p, {**kw, "sigma_beta": 1e-30}), ValueError, "larger sigma"),
    # σ that float32 rounds to 0, or that puts the positions past float32: named, not "NaN"
    (lambda im, p, kw: (im, p, {**kw, "sigma_alpha": 1e-50}), ValueError, "sigma_alpha must be large enough"),
    (lambda im, p, kw: (im, p, {**kw, "sigma_gamma": 1e-40}), ValueError, "sigma_gamma must be large enough"),
    (lambda im, p, kw: (im, p, {**kw, "sigma_beta": 1e-40}), ValueError, "sigma_beta must be large enough"),
    (lambda im, p, kw: (im, p, {**kw, "sigma_beta": 1e300}), ValueError, "sigma_beta must be at most"),  # inf in float32
    (lambda im, p, kw: (im, p, {**kw, "sigma_gamma": 1e39}), ValueError, "sigma_gamma must be at most"),
    # a float image's colours were checked against a reach of 0: "features contains NaN or infinity"
    (lambda im, p, kw: (im / 255.0, p, {**kw, "sigma_beta": 1e-40}), ValueError, "sigma_beta must be large enough"),
    (lambda im, p, kw: (np.where(im > 127, 3e38, -3e38).astype(np.float32), p, kw), ValueError,
     "image must span at most 3.403e.38"),
    (lambda im, p, kw: (np.where(im > 127, 1e300, -1e300), p, kw), ValueError, "image must span at most"),
    (lambda im, p, kw: (im, p, {**kw, "method": "fast"}), ValueError, "method"),
    (lambda im, p, kw: (im, p, {**kw, "normalization": "sym"}), ValueError, "normalization"),
    (lambda im, p, kw: (im, p, {**kw, "device": "tpu"}), ValueError, "device"),
])
def test_bad_inputs_raise_clear_errors(rng, change, error, match):
    image, probs, kwargs = change(_image(rng), _probs(rng, 3, 6, 5), dict(GOOD))
    with pytest.raises(error, match=match):
        crf.dense_crf(image, probs, **kwargs)


def test_crf_pieces_check_their_arguments():
    f = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="weight must be a finite number"):
        crf.PairwiseTerm(f, float("nan"))
    with pytest.raises(TypeError, match="weight must be a real number"):
        crf.PairwiseTerm(f, "3")
    for method in crf.METHODS:
        with pytest.raises(TypeError, match="include_self must be True or False"):
            crf.PairwiseTerm(f, 3.0, method, include_self=None)
    with pytest.raises(ValueError, match="energy must have 2 dimensions"):
        crf.softmax_labels(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="energy must be a NumPy or CuPy array"):
        crf.softmax_labels([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
        crf.softmax_labels(np.zeros((2, 3), np.float32), out=np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="probs must be a NumPy or CuPy array"):
        crf.log_probs([[[0.5]], [[0.5]]])
    assert crf.dense_crf(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 2), 0.5, np.float32), w1=2.0**23,
                         sigma_alpha=5.0, sigma_beta=5.0).sum() == pytest.approx(4.0)  # the largest weight


def test_naive_refuses_big_images():
    image = np.zeros((300, 300, 3), np.uint8)
    probs = np.full((2, 300, 300), 0.5, np.float32)
    with pytest.raises(ValueError, match="method='naive'.*at most"):
        crf.dense_crf(image, probs, method="naive", **GOOD)
    with pytest.raises(ValueError, match="at most"):
        naive.ExactFilter(np.zeros((naive.MAX_PIXELS + 1, 2), np.float32))


@pytest.mark.parametrize("method", sorted(crf.METHODS))
def test_float_images_far_from_zero_keep_their_differences(method):
    # two regions 2 apart at 1e8: in float32 both would be 1e8 (the lattice refused the
    # features and the exact filter saw one region)
    image = np.zeros((4, 6, 1))
    image[:, 3:] = 2.0
    probs = np.zeros((2, 4, 6), np.float32)
    probs[0], probs[0, :, 3:] = 0.6, 0.3
    probs[1] = 1 - probs[0]
    kwargs = dict(w1=10.0, sigma_alpha=1000.0, sigma_beta=1.0, w2=0.0, iterations=5, method=method)
    labels = crf.map_labels(crf.dense_crf(image, probs, **kwargs))
    np.testing.assert_array_equal(labels[0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(crf.map_labels(crf.dense_crf(image + 1e8, probs, **kwargs)), labels)
    np.testing.assert_array_equal(crf.bilateral_features(image + 1e8, 1000.0, 1.0)[:, 2],
                                  np.tile([0, 0, 0, 2, 2, 2], 4))


def test_lattice_kernels_are_named():
    features = np.zeros((4, 2), np.float32)
    for kernels in ("cpu", "gpu", 1):
        with pytest.raises(ValueError, match="kernels must be one of"):
            lattice.LatticeFilter(features, kernels=kernels)


@pytest.mark.parametrize("offset", [1e7, 1e9, 1e20])
def test_lattice_refuses_features_beyond_float32_integers(rng, offset):
    """Features far from the origin put the lattice's integer coordinates past 2**24, where
    float32 no longer separates neighbouring vertices; at 1e9 the int32 coordinates
    overflowed and the embedding wrote out of bounds (a crash) before this check."""
    features = rng.normal(size=(50, 5)).astype(np.float32) + np.float32(offset)
    with pytest.raises(ValueError, match="larger sigma"):
        lattice.LatticeFilter(features)
    with pytest.raises(ValueError, match="larger sigma"):
        crf.gaussian_filter(features, np.ones(50, np.float32))


def test_lattice_keeps_its_accuracy_up_to_the_limit(rng):
    """The largest offsets the check lets through filter as well as features at the origin:
    the kernel depends only on differences, so the error against the exact filter stays."""
    base = rng.normal(size=(200, 5)).astype(np.float32)
    values = rng.random((200, 2)).astype(np.float32)
    errors = []
    for offset in (0.0, 1e6):
        f = base + np.float32(offset)
        exact = naive.ExactFilter(f)(values)  # centres the features in float64: exact at any offset
        errors.append(np.abs(lattice.LatticeFilter(f)(values) - exact).max() / exact.max())
    assert errors[1] < 1.5 * errors[0] + 0.01, errors


@pytest.mark.parametrize("method", sorted(crf.METHODS))
def test_filters_check_what_they_are_applied_to(rng, method):
    """Values with the wrong number of rows reached the lattice's kernels unchecked: a
    segfault from the filter, heap corruption from a pairwise term."""
    f = (rng.random((50, 5)) * 3).astype(np.float32)
    gaussian, ones = crf.METHODS[method](f), np.ones((50, 3), np.float32)
    wrong_rows = r"values must have shape \(50, any\), got shape \(5, 3\)"
    with pytest.raises(ValueError, match=wrong_rows):
        gaussian(ones[:5])
    with pytest.raises(ValueError, match=wrong_rows):
        crf.PairwiseTerm(f, 3.0, method).message(ones[:5])
    with pytest.raises(ValueError, match=r"values must have shape \(50, any\), got shape \(50,\)"):
        gaussian(ones[:, 0])
    with pytest.raises(TypeError, match="values must be float32 or float64"):
        gaussian(ones.astype(np.int32))
    with pytest.raises(TypeError, match="values must be a NumPy or CuPy array"):
        gaussian(ones.tolist())
    with pytest.raises(ValueError, match=r"out must have shape \(50, 3\)"):
        gaussian.apply(ones, ones[:, :2])
    with pytest.raises(ValueError, match=r"in_scale must have shape \(50,\)"):
        gaussian.apply(ones, ones.copy(), in_scale=ones[:49, 0])
    with pytest.raises(ValueError, match=r"out_scale must have shape \(50,\)"):
        gaussian.apply(ones, ones.copy(), out_scale=ones[:, :2])
    for features in (np.zeros((0, 2), np.float32), np.zeros((4, 0), np.float32)):
        with pytest.raises(ValueError, match="N >= 1 points and d >= 1"):
            crf.METHODS[method](features)
    with pytest.raises(ValueError, match="features must have 2 dimensions"):
        crf.METHODS[method](f[0])


@pytest.mark.parametrize("method", sorted(crf.METHODS))
def test_arrays_written_in_place_must_be_writeable(rng, method):
    """A read-only array reached the Numba kernels as a type they have no code for: a raw
    TypingError instead of a message naming the array."""
    f = rng.random((5, 2)).astype(np.float32)
    values, frozen = np.ones((5, 3), np.float32), np.zeros((5, 3), np.float32)
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="energy must be writeable"):
        crf.softmax_labels(frozen)
    with pytest.raises(ValueError, match="out must be writeable"):
        crf.softmax_labels(values.copy(), out=frozen)
    with pytest.raises(ValueError, match="out must be writeable"):
        crf.METHODS[method](f).apply(values, frozen)
    with pytest.raises(ValueError, match="energy must be writeable"):
        crf.PairwiseTerm(f, 3.0, method).add_message(values, frozen)
    term = crf.PairwiseTerm(f, 3.0, method)
    with pytest.raises(ValueError, match="energy must be writeable"):  # was NumPy's "destination is read-only"
        crf.mean_field_step(values, values, [term], energy=frozen)
    with pytest.raises(ValueError, match=r"energy must have shape \(5, 3\)"):  # was a broadcast
        crf.mean_field_step(values, values, [term], energy=np.zeros(3, np.float32))


def test_gaussian_filter_checks_its_inputs():
    f = np.zeros((4, 2), np.float32)
    for method in crf.METHODS:
        with pytest.raises(ValueError, match="N >= 1 points and d >= 1"):
            crf.gaussian_filter(np.zeros((4, 0), np.float32), np.zeros(4, np.float32), method=method)
        with pytest.raises(ValueError, match="N >= 1 points and d >= 1"):
            crf.gaussian_filter(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), method=method)
    with pytest.raises(ValueError, match="values must be"):
        crf.gaussian_filter(f, np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="features must have 2 dimensions"):
        crf.gaussian_filter(f[0], np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="method"):
        crf.gaussian_filter(f, np.zeros(4, np.float32), method="exact")


def test_embedding_rounds_ties_to_even():
    """A point whose elevated coordinate over d + 1 is exactly ±0.5 rounds to 0, as the
    reference's SSE rounding does (half-up would move it to another vertex)."""
    s = lattice.scale_factors(1)[0]
    candidates = [np.float32(1) / s, np.nextafter(np.float32(1) / s, np.float32(1)),
                  np.nextafter(np.float32(1) / s, np.float32(-1))]
    ties = [f for f in candidates if np.float32(np.float32(0.5) * (f * s)) == np.float32(0.5)]
    assert ties  # one of the three float32 neighbours gives an exact tie
    _, rem0, _, _ = lattice.embed(np.array([[ties[0]]], np.float32))
    np.testing.assert_array_equal(rem0, [[0, 0]])


def test_exact_filter_is_exact_far_from_zero(rng):
    """The exact filter centres its features before |a|² + |b|² − 2ab: at 1e6 the
    uncentred sum loses every digit of the distances."""
    f, v = rng.uniform(0, 3, (40, 2)), rng.standard_normal((40, 2))
    np.testing.assert_allclose(naive.ExactFilter(f + 1e6)(v), naive.ExactFilter(f)(v), rtol=1e-6, atol=1e-9)


def test_softmax_labels_subtracts_the_maximum_of_every_label():
    """Energies of any size give a finite distribution, whichever label holds the largest."""
    energy = np.array([[0.0, 0.0, 1000.0], [1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0]], np.float32)
    np.testing.assert_array_equal(crf.softmax_labels(energy), np.eye(3, dtype=np.float32)[[2, 0, 1]])


def test_probabilities_off_by_more_than_a_thousandth_are_refused(rng):
    image = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    probs = np.full((2, 4, 5), 0.5, np.float32)
    crf.dense_crf(image, probs * 1.0009, iterations=1, w1=4.0, sigma_alpha=3.0, sigma_beta=5.0)
    with pytest.raises(ValueError, match="sum to 1"):
        crf.dense_crf(image, probs * 1.005, iterations=1, w1=4.0, sigma_alpha=3.0, sigma_beta=5.0)


def test_sigmas_are_checked_against_the_largest_value_they_divide():
    """σ = 1e-37 gives float32 features for a 1-pixel-wide span, but not for 47 pixels of
    position or 255 of colour: refused, not turned into infinite features."""
    crf.spatial_features((1, 2), 1e-37)  # the largest position is 1: 1e37 is a float32
    with pytest.raises(ValueError, match="sigma_gamma must be large enough that 47 / sigma_gamma"):
        crf.spatial_features((48, 48), 1e-37)
    image = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="sigma_beta must be large enough that 255 / sigma_beta"):
        crf.bilateral_features(image, 1.0, 1e-37)


def test_slightly_negative_probabilities_are_refused():
    probs = np.full((2, 2, 2), 0.5, np.float32)
    probs[:, 0, 0] = [-1e-4, 1 + 1e-4]  # sums to 1, so only the sign can refuse it
    with pytest.raises(ValueError, match="probs must be >= 0"):
        crf.dense_crf(np.zeros((2, 2, 3), np.uint8), probs, w1=5.0, sigma_alpha=10.0, sigma_beta=10.0)
