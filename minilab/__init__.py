"""minilab: DeepLab rebuilt from scratch in NumPy and Numba, on the CPU and the GPU.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017.
"""
__version__ = "0.1.0"
