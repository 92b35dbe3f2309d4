"""SimpleCNN (the seed tutorial's model), its fused twin, and the fused layers as modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .ops import _check_backend_name, conv3x3_relu2d, conv3x3_relu_maxpool2d

# The nn.Conv2d settings the fused op computes.
FUSABLE_CONV = {
    "kernel_size": (3, 3),
    "stride": (1, 1),
    "padding": (1, 1),
    "dilation": (1, 1),
    "groups": 1,
    "padding_mode": "zeros",
}


def conv_mismatch(conv: nn.Conv2d) -> dict:
    """The settings of `conv` that differ from FUSABLE_CONV, with their values."""
    return {k: getattr(conv, k) for k, v in FUSABLE_CONV.items() if getattr(conv, k) != v}


class _FusedConv3x3(nn.Module):
    """What the fused layers share: ``weight`` (out_channels, in_channels, 3, 3) and ``bias``
    (out_channels,), shaped and initialised as ``nn.Conv2d`` initialises them, so the state_dict
    is a Conv2d's; construction from a Conv2d (and a BatchNorm2d to fold); the backend. The
    subclass names the op (`_op`)."""

    _op = None  # the fused op: (input, weight, bias, *, backend) -> Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        device=None,
        dtype=None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _check_backend_name(backend, self._op.__name__)
        self.in_channels, self.out_channels, self.backend = in_channels, out_channels, backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's own initialisation (kaiming-uniform weight, fan-in-uniform bias): it only
        # reads self.weight and self.bias, so the same random stream gives the same values.
        nn.Conv2d.reset_parameters(self)  # type: ignore[arg-type]

    @classmethod
    def from_conv2d(
        cls,
        conv: nn.Conv2d,
        backend: str | None = None,
        batchnorm: nn.BatchNorm2d | None = None,
    ) -> _FusedConv3x3:
        """The fused layer sharing `conv`'s Parameters (not copies: optimizers keep working).

        With `batchnorm`, the BatchNorm2d that follows the conv, normalising with its running
        statistics (eval mode): new Parameters with it folded in (torch.nn.utils.fusion), weight
        ``w * s`` and bias ``(b - running_mean) * s + beta``, ``s = gamma / sqrt(running_var +
        eps)``. Later changes to the BatchNorm do not reach them.
        """
        wrong = conv_mismatch(conv)
        if wrong:
            raise ValueError(f"cannot fuse {conv}: needs {FUSABLE_CONV}, has {wrong}")
        # Built on the meta device, which allocates nothing and draws no random numbers.
        fused = cls(
            conv.in_channels,
            conv.out_channels,
            bias=conv.bias is not None or batchnorm is not None,
            device="meta",
            dtype=conv.weight.dtype,
            backend=backend,
        )
        if batchnorm is None:
            fused.weight, fused.bias = conv.weight, conv.bias
            return fused
        if batchnorm.training or batchnorm.running_mean is None:
            raise ValueError(
                f"cannot fold {batchnorm}: it normalises with batch statistics (training mode or "
                "track_running_stats=False)"
            )
        with torch.no_grad():
            fused.weight, fused.bias = fuse_conv_bn_weights(
                conv.weight,
                conv.bias,
                batchnorm.running_mean,
                batchnorm.running_var,
                batchnorm.eps,
                batchnorm.weight,
                batchnorm.bias,
            )
        fused.bias.requires_grad_(conv.weight.requires_grad)  # also without a conv bias
        return fused

    def forward(self, input: Tensor) -> Tensor:
        return self._op(input, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        backend = "" if self.backend is None else f", backend={self.backend!r}"
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}{backend}"


class Conv3x3ReLUMaxPool2d(_FusedConv3x3):
    """``MaxPool2d(2, 2)(ReLU()(Conv2d(in_channels, out_channels, 3, padding=1)(x)))`` as one op
    (conv3x3_relu_maxpool2d); a Conv2d's parameters and state_dict."""

    _op = staticmethod(conv3x3_relu_maxpool2d)


class Conv3x3ReLU2d(_FusedConv3x3):
    """``ReLU()(Conv2d(in_channels, out_channels, 3, padding=1)(x))`` as one op (conv3x3_relu2d);
    a Conv2d's parameters and state_dict."""

    _op = staticmethod(conv3x3_relu2d)


class SimpleCNN(nn.Module):
    """The seed tutorial's CIFAR-10 classifier: conv 3->18 (3x3, pad 1), ReLU, 2x2 max-pool,
    fc 4608->64, ReLU, fc 64->10. Input (N, 3, 32, 32), output (N, 10) logits."""

    def __init__(self, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(3, 18, kernel_size=3, stride=1, padding=1, **factory)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        self.fc1 = nn.Linear(18 * 16 * 16, 64, **factory)
        self.fc2 = nn.Linear(64, 10, **factory)

    def features(self, x: Tensor) -> Tensor:
        return self.pool(F.relu(self.conv1(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class FusedSimpleCNN(SimpleCNN):
    """SimpleCNN with conv1 -> ReLU -> pool run as the fused op.

    Same state_dict keys and shapes as SimpleCNN (load either's weights into the other), and
    with the same random seed the same initial weights.
    """

    def __init__(self, device=None, dtype=None, backend: str | None = None) -> None:
        super().__init__(device=device, dtype=dtype)
        self.conv1 = Conv3x3ReLUMaxPool2d.from_conv2d(self.conv1, backend=backend)
        del self.pool

    def features(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(
                f"FusedSimpleCNN expects input of shape (N, 3, 32, 32), got {tuple(x.shape)}"
            )
        return self.conv1(x)


class CifarVGG(nn.Module):
    """A VGG-style CIFAR-10 classifier for benchmarks and tests of `fuse`: four
    conv3x3 -> ReLU -> 2x2 max-pool blocks (conv3x3_relu_maxpool2d once fused) and one
    conv3x3 -> ReLU without a pool (conv3x3_relu2d), 64 to 512 channels, then a linear
    classifier. Input (N, 3, 32, 32)."""

    def __init__(self, num_classes: int = 10, device=None, dtype=None) -> None:
        super().__init__()
        f = {"device": device, "dtype": dtype}

        def conv(c_in, c_out):
            return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, **f)

        self.features = nn.Sequential(
            conv(3, 64), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),  # 16x16
            conv(64, 128), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),  # 8x8
            conv(128, 256), nn.ReLU(inplace=True),  # no pool
            conv(256, 256), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),  # 4x4
            conv(256, 512), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),  # 2x2
        )  # fmt: skip
        self.classifier = nn.Linear(512 * 2 * 2, num_classes, **f)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
