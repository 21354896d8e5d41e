"""minilab: DeepLab rebuilt from scratch in NumPy and Numba, on the CPU and the GPU.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017.
"""
import os
import warnings


def _gnu_openmp_loaded():
    """Whether this process already holds the GNU OpenMP runtime ``libgomp.so.1`` (``import
    torch`` loads one; scikit-learn's is renamed and does not count). Numba's OpenMP threads
    would then share it, with the wait policy it read when it was loaded."""
    try:
        import ctypes
        ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        return True
    except (OSError, AttributeError):  # not loaded, or no RTLD_NOLOAD on this platform
        return False


# Numba's parallel loops run on OpenMP threads. OpenMP's default lets idle threads spin
# between loops, which on a machine shared with other work (or with BLAS threads) makes two
# threads several times slower than one; passive waiting keeps the speed-up. OpenMP reads
# the variable once, when it is loaded, so it is set here, on the first import of any
# minilab module; a value the user chose is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "passive"
    if _gnu_openmp_loaded():
        warnings.warn(
            "OpenMP (libgomp) was loaded before minilab, most likely by 'import torch', and keeps "
            "its idle threads spinning; minilab's Numba loops share them and, between BLAS calls, "
            "run up to 30% slower on a 2-core machine. Import minilab before torch, or set "
            "OMP_WAIT_POLICY=passive in the environment before Python starts.", RuntimeWarning, stacklevel=2)

__version__ = "0.1.0"
