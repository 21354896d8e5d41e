"""Fully connected CRF (DeepLab §3.3, eq. 2-3) by mean-field inference, exact or on the
permutohedral lattice, on the CPU (Numba) and the GPU (Numba CUDA + CuPy)."""
from .lattice import LatticeFilter
from .meanfield import (METHODS, NORMALIZATIONS, PairwiseTerm, dense_crf, gaussian_filter, map_labels,
                        mean_field_step, softmax_labels)
from .naive import ExactFilter
from .potentials import bilateral_features, log_probs, spatial_features

__all__ = ["METHODS", "NORMALIZATIONS", "ExactFilter", "LatticeFilter", "PairwiseTerm", "bilateral_features",
           "dense_crf", "gaussian_filter", "log_probs", "map_labels", "mean_field_step", "softmax_labels",
           "spatial_features"]
