"""simplecnn-kernels: a fused conv3x3 + bias + ReLU + 2x2 max-pool operator for PyTorch.

    import simplecnn_kernels as sk
    # max_pool2d(relu(conv2d(x, weight, bias, padding=1)), 2) in one pass:
    y = sk.conv3x3_relu_maxpool2d(x, weight, bias)
    y = sk.conv3x3_relu2d(x, weight, bias)             # relu(conv2d(...)): no pool
    model = sk.FusedSimpleCNN()                      # SimpleCNN's drop-in twin, same state_dict
    fused = sk.fuse(any_model)     # every conv3x3 [-> BatchNorm] -> ReLU [-> maxpool2x2] fused

Importing the package registers ``torch.ops.simplecnn.conv3x3_relu_maxpool2d`` and
``torch.ops.simplecnn.conv3x3_relu2d``.
"""

from .fuse import fuse
from .models import CifarVGG, Conv3x3ReLU2d, Conv3x3ReLUMaxPool2d, FusedSimpleCNN, SimpleCNN
from .ops import (
    BACKENDS,
    available_backends,
    conv3x3_relu2d,
    conv3x3_relu_maxpool2d,
    cpu_capabilities,
    cpu_capability,
    cpu_winograd,
    decompositions,
    forced_cpu_capability,
    get_cpu_winograd,
    set_cpu_winograd,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CifarVGG",
    "Conv3x3ReLU2d",
    "Conv3x3ReLUMaxPool2d",
    "FusedSimpleCNN",
    "SimpleCNN",
    "available_backends",
    "conv3x3_relu2d",
    "conv3x3_relu_maxpool2d",
    "cpu_capabilities",
    "cpu_capability",
    "cpu_winograd",
    "decompositions",
    "forced_cpu_capability",
    "get_cpu_winograd",
    "set_cpu_winograd",
    "fuse",
]
