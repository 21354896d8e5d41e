"""Layers, the ASPP head, backbones and DeepLab models, each with a hand-written backward.

Everything a user needs is re-exported here::

    from minilab import nn
    model = nn.deeplab("tiny-resnet-aspp", num_classes=4, seed=0)
    scores = model.forward(x)            # N×4×H/8×W/8
    dx = model.backward(dscores)         # parameter gradients land in p.grad
"""
from .aspp import ASPP, ASPP_L, ASPP_S, ASPP_V3, LARGE_FOV, ASPPBranch, ASPPv3, ImagePooling, conv_bn_relu
from .backbones import VGG, Bottleneck, ResNet, resnet, vgg16_largefov
from .deeplab import (PRESETS, DeepLab, MultiScale, deeplab, deeplab_resnet, deeplab_vgg16,
                      output_stride, receptive_field, table1_fov, upsample_to)
from .layers import BatchNorm2d, Conv2d, Dropout2d, MaxPool2d, ReLU, Upsample, make_rng
from .module import LoadResult, Module, Parameter, Sequential, load_weights, save_weights

__all__ = [
    "ASPP", "ASPP_L", "ASPP_S", "ASPP_V3", "LARGE_FOV", "ASPPBranch", "ASPPv3", "ImagePooling", "conv_bn_relu", "VGG", "Bottleneck", "ResNet",
    "resnet", "vgg16_largefov", "PRESETS", "DeepLab", "MultiScale", "deeplab", "deeplab_resnet",
    "deeplab_vgg16", "output_stride", "receptive_field", "table1_fov", "upsample_to",
    "BatchNorm2d", "Conv2d", "Dropout2d", "MaxPool2d", "ReLU", "Upsample", "make_rng",
    "LoadResult", "Module", "Parameter", "Sequential", "load_weights", "save_weights",
]
