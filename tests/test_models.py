"""SimpleCNN, FusedSimpleCNN and the fused layer module."""

import pytest
import torch
from torch import nn

import simplecnn_kernels as sk
from simplecnn_kernels.testing import assert_matches_reference


def test_simplecnn_is_the_seed_model():
    model = sk.SimpleCNN()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "conv1.weight": (18, 3, 3, 3),
        "conv1.bias": (18,),
        "fc1.weight": (64, 4608),
        "fc1.bias": (64,),
        "fc2.weight": (10, 64),
        "fc2.bias": (10,),
    }
    assert model(torch.randn(5, 3, 32, 32)).shape == (5, 10)


def test_same_seed_same_weights():
    torch.manual_seed(7)
    stock = sk.SimpleCNN()
    torch.manual_seed(7)
    fused = sk.FusedSimpleCNN()
    assert list(stock.state_dict()) == list(fused.state_dict())
    for key, value in stock.state_dict().items():
        assert torch.equal(value, fused.state_dict()[key]), key


@pytest.mark.parametrize("direction", ["stock->fused", "fused->stock"])
def test_state_dict_loads_both_ways_and_outputs_agree(direction):
    stock, fused = sk.SimpleCNN(), sk.FusedSimpleCNN()
    if direction == "stock->fused":
        fused.load_state_dict(stock.state_dict())
    else:
        stock.load_state_dict(fused.state_dict())
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), stock(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fused_model_gradients_equal_stock(layout):
    fused = sk.FusedSimpleCNN()
    stock = sk.SimpleCNN()
    stock.load_state_dict(fused.state_dict())
    x = torch.randn(6, 3, 32, 32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(10, (6,))
    for model in (fused, stock):
        nn.functional.cross_entropy(model(x), target).backward()
    for (name, p), q in zip(fused.named_parameters(), stock.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32), (2, 3, 64, 64), (2, 3, 32, 31)])
def test_fused_model_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match=r"FusedSimpleCNN expects input of shape \(N, 3, 32, 32\)"):
        sk.FusedSimpleCNN()(torch.randn(*shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_model_dtype(dtype):
    fused = sk.FusedSimpleCNN(dtype=dtype)
    stock = sk.SimpleCNN(dtype=dtype)
    stock.load_state_dict(fused.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=dtype)
    assert fused(x).dtype == dtype
    assert_matches_reference(fused.features(x), x, fused.conv1.weight, fused.conv1.bias)


def test_layer_initialises_like_conv2d():
    torch.manual_seed(3)
    conv = nn.Conv2d(5, 7, 3, padding=1)
    torch.manual_seed(3)
    fused = sk.Conv3x3ReLUMaxPool2d(5, 7)
    assert torch.equal(conv.weight, fused.weight) and torch.equal(conv.bias, fused.bias)
    assert sk.Conv3x3ReLUMaxPool2d(5, 7, bias=False).bias is None
    assert set(fused.state_dict()) == set(conv.state_dict())


def test_layer_from_conv2d_shares_parameters():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    fused = sk.Conv3x3ReLUMaxPool2d.from_conv2d(conv, backend="cpu")
    assert fused.weight is conv.weight and fused.bias is None
    x = torch.randn(2, 4, 10, 10)
    assert_matches_reference(fused(x), x, conv.weight, None)
    assert "backend='cpu'" in repr(fused)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 5, padding=2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Conv2d(3, 4, 3, padding=0),
        nn.Conv2d(3, 4, 3, padding=2, dilation=2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    ],
    ids=["5x5", "stride2", "pad0", "dilation2", "groups2", "reflect"],
)
def test_layer_from_conv2d_rejects_other_settings(conv):
    with pytest.raises(ValueError, match="cannot fuse"):
        sk.Conv3x3ReLUMaxPool2d.from_conv2d(conv)
