"""Shared fixtures: the ``xp`` fixture runs a test body with NumPy and, where a GPU is
usable, with CuPy; ``gpu`` tests skip cleanly without one; ``cudasim`` tests need Numba's
CUDA simulator (or a real GPU) and skip otherwise."""
import numpy as np
import pytest

from minilab import backend

HAS_GPU = backend.gpu_available()
CUDA_KERNELS = backend.cudasim() or (backend.cuda is not None and backend.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    for item in items:
        # by marker, not keyword: a parametrize id such as [gpu] must not skip a CPU test
        if item.get_closest_marker("gpu") and not HAS_GPU:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU with CuPy"))
        if item.get_closest_marker("cudasim") and not CUDA_KERNELS:
            item.add_marker(pytest.mark.skip(reason="needs NUMBA_ENABLE_CUDASIM=1 or a CUDA GPU"))


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: NumPy always, CuPy on a machine with a GPU."""
    return np if request.param == "numpy" else backend.cupy


@pytest.fixture
def rng():
    return np.random.default_rng(0)
