import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from minilab import backend, validate


def test_array_module_numpy():
    assert backend.array_module(np.zeros(2), None, np.ones(3)) is np
    assert backend.array_module() is np


@pytest.mark.gpu
def test_array_module_mixed_raises():
    with pytest.raises(TypeError, match="mix"):
        backend.array_module(np.zeros(2), backend.cupy.zeros(2))


@pytest.mark.gpu
def test_to_device_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    g = backend.to_device(x, "gpu")
    assert backend.array_module(g) is backend.cupy
    np.testing.assert_array_equal(backend.to_device(g, "cpu"), x)


@pytest.mark.gpu
def test_launch_keeps_the_order_of_cupy_work_on_the_current_stream():
    """A Numba kernel queued by backend.launch runs after the CuPy work queued before it and
    before the work queued after it, on the null stream and on two others, and a launch
    configuration Numba keeps is not reused for another grid or another stream."""
    cp, cuda = backend.cupy, backend.cuda

    @cuda.jit
    def add_one(x):
        i = cuda.grid(1)
        if i < x.size:
            x[i] += 1

    for stream in (cp.cuda.Stream.null, cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)):
        with stream:
            for size in (1 << 22, 1000, 1 << 22):  # a long first kernel would expose a race
                a = cp.zeros(size, np.float32)
                a += 1
                backend.launch(add_one, a.size, a)
                a *= 3
                backend.launch(add_one, (1, backend.THREADS), a[:backend.THREADS])
                expected = np.full(size, 6, np.float32)  # (0 + 1 + 1)·3
                expected[:backend.THREADS] = 7
                np.testing.assert_array_equal(cp.asnumpy(a), expected)  # asnumpy waits for the stream


@pytest.mark.gpu
def test_launch_passes_arrays_of_any_layout_and_numbers_of_any_type():
    """launch packs the parameters itself: strided, transposed and reversed views, 0-d
    arrays, and Python and NumPy numbers (int64, int32, float64, float32, bool) reach the
    kernel with their values, and one compiled kernel serves arrays of the same type
    whatever their shapes and strides."""
    cp, cuda = backend.cupy, backend.cuda

    @cuda.jit
    def affine(x, scale, shift, flag, offset, out):
        i, j = cuda.grid(2)
        if i < out.shape[0] and j < out.shape[1]:
            out[i, j] = x[i, j] * scale + shift + offset[()] if flag else -1

    rng = np.random.default_rng(0)
    base = cp.asarray(rng.standard_normal((9, 14)))
    wide = cp.asarray(rng.standard_normal((9, 16)))  # [:, ::8]: strides (128, 64), which numba-cuda 0.30 reads as C
    for x in (base, base[1::2, ::3], base.T, base[::-1, ::-2], base[:, 3:4], wide[:, ::8]):
        for scale, shift, flag in ((2, 0.5, True), (np.int32(-3), np.float32(0.25), np.bool_(True)),
                                   (np.int64(5), 1.5, False)):
            out = cp.full(x.shape, np.nan)
            offset = cp.asarray(np.float64(0.125))
            backend.launch(affine, ((2, 2), (8, 8)), x, scale, shift, flag, offset, out)
            expected = cp.asnumpy(x) * float(scale) + float(shift) + 0.125 if flag else np.full(x.shape, -1.0)
            np.testing.assert_allclose(cp.asnumpy(out), expected, rtol=1e-6)
    with pytest.raises(TypeError, match="NumPy"):
        backend.launch(affine, ((1, 1), (8, 8)), base, 1, 0.0, True, np.zeros(()), out)


def test_resolve_device():
    assert backend.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device"):
        backend.resolve_device("tpu")


@pytest.mark.skipif(backend.gpu_available(), reason="tests the machine without a GPU")
def test_no_gpu_fallback(monkeypatch):
    monkeypatch.setattr(backend, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="CPU"):
        assert backend.resolve_device("auto") == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # says so only once
        assert backend.resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="gpu"):
        backend.resolve_device("gpu")
    np.testing.assert_array_equal(backend.to_device([1, 2], "auto"), [1, 2])


def test_launch_counts_threads_of_any_integer_type_and_skips_empty_work():
    configs = []

    class Kernel:  # records the launch configuration instead of running
        def __getitem__(self, config):
            configs.append(config[:2])
            return lambda *args: None
    backend.launch(Kernel(), np.int64(backend.THREADS + 1))
    backend.launch(Kernel(), 0)
    backend.launch(Kernel(), (0, 512))  # batch norm's block per channel, with no channels
    backend.launch(Kernel(), ((4, 0), (16, 16)))
    backend.launch(Kernel(), ((4, 2), (16, 16)))
    assert configs == [(2, backend.THREADS), ((4, 2), (16, 16))]


def test_validate_messages():
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        validate.float_array("x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        validate.float_array("x", np.zeros(3), ndim=4)
    with pytest.raises(ValueError, match="x contains NaN"):
        validate.float_array("x", np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="x must be a NumPy"):
        validate.float_array("x", [1.0])
    with pytest.raises(ValueError, match="rate must be >= 1"):
        validate.integer("rate", 0, minimum=1)
    with pytest.raises(TypeError, match="rate must be an integer"):
        validate.integer("rate", 1.5)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        validate.positive("sigma", -1)
    assert validate.pair("padding", 2) == (2, 2)
    assert validate.pair("padding", np.array([1, 2])) == (1, 2)  # an array is a pair too
    with pytest.raises(ValueError, match="padding must be >= 0"):
        validate.pair("padding", (1, -1))
    with pytest.raises(ValueError, match="method must be one of"):
        validate.choice("method", "fft", {"sparse", "zeros"})
    assert validate.label_array("labels", np.zeros(3, np.uint8)) is not None
    for bad in (np.zeros(3, bool), np.zeros(3, np.float32)):
        with pytest.raises(TypeError, match=f"labels must have an integer dtype, got dtype {bad.dtype}"):
            validate.label_array("labels", bad)


def test_real_takes_any_real_number_and_names_one_too_large_for_a_float():
    from fractions import Fraction
    assert validate.real("alpha", Fraction(1, 3)) == pytest.approx(1 / 3)
    assert validate.positive("eps", Fraction(1, 3)) == pytest.approx(1 / 3)
    assert validate.real("alpha", np.float32(0.5), minimum=Fraction(1, 2)) == 0.5
    for huge in (10**400, -10**400, Fraction(10**400, 3)):
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            validate.real("alpha", huge)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        validate.positive("eps", Fraction(1, 10**400))  # 0 as a float


def test_finite_scans_off_skips_only_the_scan():
    bad = np.array([1.0, np.nan])
    assert validate.scans_on()
    with validate.finite_scans_off():
        assert validate.float_array("x", bad) is bad
        assert not validate.scans_on()
        with validate.finite_scans_off():  # nests
            pass
        validate.float_array("x", bad)  # still off after the inner block
        with pytest.raises(TypeError, match="x must be float32 or float64"):
            validate.float_array("x", np.zeros(3, dtype=np.int64))
        with pytest.raises(ValueError, match="x must have 4 dimensions"):
            validate.float_array("x", bad, ndim=4)
    with pytest.raises(ValueError, match="x contains NaN"):
        validate.float_array("x", bad)
    with pytest.raises(RuntimeError), validate.finite_scans_off():
        raise RuntimeError  # the scan comes back after an exception too
    assert validate.scans_on()
    with pytest.raises(ValueError, match="x contains NaN"):
        validate.float_array("x", bad)


@pytest.mark.parametrize("code, user_policy, warns", [
    ("import torch; import minilab", None, True),       # torch's libgomp read the default policy
    ("import minilab; import torch", None, False),      # minilab asked for passive waiting in time
    ("import torch; import minilab", "active", False),  # the user's choice is kept, nothing to say
    ("import sklearn; import minilab", None, False),    # scikit-learn's OpenMP is its own copy
])
def test_import_warns_only_when_openmp_came_first_with_spinning_threads(code, user_policy, warns):
    pytest.importorskip(code.split()[1].rstrip(";"))
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    run = subprocess.run([sys.executable, "-c", code + "; import os; print(os.environ['OMP_WAIT_POLICY'])"],
                         env=env, capture_output=True, text=True, check=True)
    assert ("RuntimeWarning" in run.stderr and "OMP_WAIT_POLICY=passive" in run.stderr) == warns, run.stderr
    assert run.stdout.strip() == (user_policy or "passive")


def test_cpu_means_cpu_whether_or_not_there_is_a_gpu(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no usable GPU" fallback warning for an explicit cpu
        assert backend.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    assert backend.resolve_device("cpu") == "cpu"
    assert backend.resolve_device("auto") == "gpu"


def test_choice_refuses_none():
    with pytest.raises(ValueError, match="normalization must be one of"):
        validate.choice("normalization", None, ("symmetric", "after", "none"))
