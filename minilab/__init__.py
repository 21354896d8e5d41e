"""minilab: DeepLab rebuilt from scratch in NumPy and Numba, on the CPU and the GPU.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017.
"""
import os

# Numba's parallel loops run on OpenMP threads. OpenMP's default lets idle threads spin
# between loops, which on a machine shared with other work (or with BLAS threads) makes two
# threads several times slower than one; passive waiting keeps the speed-up. It must be set
# before Numba starts its threads, so it is set here, on the first import of any minilab
# module; a value the user chose is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

__version__ = "0.1.0"
