"""Fully connected CRF (DeepLab §3.3, eq. 2-3) by mean-field inference, exact or on the
permutohedral lattice, on the CPU (Numba) and the GPU (Numba CUDA + CuPy)."""
import os

# Each mean-field iteration runs ~17 short parallel loops. OpenMP's default lets idle threads
# spin between them, which on a machine shared with other work (or with fewer free cores than
# threads) makes two threads several times slower than one; passive waiting keeps the speed-up.
# Set before Numba starts its OpenMP threads; a value the user chose is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
from .lattice import LatticeFilter
from .meanfield import (METHODS, NORMALIZATIONS, PairwiseTerm, dense_crf, gaussian_filter, map_labels,
                        mean_field_step, softmax_labels)
from .naive import ExactFilter
from .potentials import bilateral_features, log_probs, spatial_features

__all__ = ["METHODS", "NORMALIZATIONS", "ExactFilter", "LatticeFilter", "PairwiseTerm", "bilateral_features",
           "dense_crf", "gaussian_filter", "log_probs", "map_labels", "mean_field_step", "softmax_labels",
           "spatial_features"]
