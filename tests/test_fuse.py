"""fuse(): which chains it fuses, which it leaves, and that the result stays a drop-in."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import simplecnn_kernels as sk

FUSED = sk.Conv3x3ReLUMaxPool2d


def _count(model, cls):
    return sum(type(m) is cls for m in model.modules())


def _assert_same_outputs(a, b, *shape):
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-5)


class VGGStyle(nn.Module):
    """Fusable blocks beside ones fuse must leave alone."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # fusable
            nn.Conv2d(16, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 5x5
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),  # fusable
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # stride 2
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),  # ceil
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.head(self.features(x)).flatten(1))


class Functional(nn.Module):
    """The functional spellings, both orders of ReLU and pool, and chains that must stay."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.e = nn.Conv2d(8, 8, 3, padding=0)
        self.f = nn.Conv2d(8, 8, 3, padding=1, dilation=1, groups=2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.a(x), inplace=True), 2)  # fused
        x = torch.max_pool2d(torch.relu_(self.b(x)), 2)  # fused
        x = F.max_pool2d(self.c(x), kernel_size=2, stride=2).relu()  # pool then ReLU: fused
        y = self.d(x)
        x = F.max_pool2d(F.relu(y), 2) + y.mean()  # the conv output used elsewhere: stays
        x = F.max_pool2d(F.relu(self.e(F.pad(x, (1, 1, 1, 1)))), 2)  # padding 0: stays
        return F.max_pool2d(F.relu(self.f(x)), 2)  # groups: stays


class DoesNotTrace(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.other = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: symbolic tracing fails
            x = -x
        return self.other(self.block(x))


def test_vgg_style_model():
    model = VGGStyle().eval()
    fused = sk.fuse(model)
    assert fused.fused_layers == ["features.0", "features.6"]
    assert _count(fused, FUSED) == 2 and _count(fused, nn.Conv2d) == 3  # 5x5, stride, ceil
    assert _count(model, FUSED) == 0  # the original is untouched
    _assert_same_outputs(model, fused, 4, 3, 32, 32)
    assert list(fused.state_dict()) == list(model.state_dict())


def test_functional_forms():
    model = Functional().eval()
    fused = sk.fuse(model)
    assert fused.fused_layers == ["a", "b", "c"]
    assert _count(fused, nn.Conv2d) == 3
    _assert_same_outputs(model, fused, 2, 3, 64, 64)


def test_model_that_does_not_trace_falls_back_to_sequentials():
    model = DoesNotTrace().eval()
    fused = sk.fuse(model)
    assert isinstance(fused, DoesNotTrace)
    assert fused.fused_layers == ["block.0", "other.0"]
    assert isinstance(fused.block[1], nn.Identity) and isinstance(fused.block[2], nn.Identity)
    _assert_same_outputs(model, fused, 2, 3, 16, 16)
    assert list(fused.state_dict()) == list(model.state_dict())


def test_the_original_model_is_left_unchanged():
    for model in (DoesNotTrace(), Functional()):
        fused = sk.fuse(model)
        assert fused is not model and _count(fused, FUSED) > 0 and _count(model, FUSED) == 0


class SharedConv(nn.Module):
    """One conv module called twice: a chain at one call, a plain conv at the other."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv(x)), 2).sum() + self.conv(x).sum()


class SharedConvInSequentials(DoesNotTrace):
    """The same conv instance in two containers, only one of them a chain."""

    def __init__(self):
        super().__init__()
        self.plain = nn.Sequential(self.other[0])

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        x = self.block(x)
        return self.other(x).sum() + self.plain(x).sum()


@pytest.mark.parametrize(
    ("model_class", "expected", "c_in"),
    [(SharedConv, [], 8), (SharedConvInSequentials, ["block.0"], 3)],
)
def test_a_conv_called_elsewhere_is_not_fused(model_class, expected, c_in):
    model = model_class().eval()
    fused = sk.fuse(model)
    assert fused.fused_layers == expected
    x = torch.randn(2, c_in, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


def test_fuse_simplecnn_behaves_as_fused_simplecnn():
    stock = sk.SimpleCNN().eval()
    fused = sk.fuse(stock, backend="cpu")
    assert fused.fused_layers == ["conv1"]
    twin = sk.FusedSimpleCNN().eval()
    twin.load_state_dict(fused.state_dict())  # the same keys both ways
    fused.load_state_dict(twin.state_dict())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), twin(x))
        torch.testing.assert_close(fused(x), stock(x), rtol=1e-4, atol=1e-5)


def test_fused_model_trains_like_the_original():
    model = VGGStyle()
    fused = sk.fuse(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(10, (4,))
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(fused(x), y).backward()
    grads = dict(model.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_compile_fullgraph_of_a_fused_model():
    fused = sk.fuse(sk.CifarVGG().eval())
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fused(x))


def test_export_round_trip_of_a_fused_model():
    fused = sk.fuse(sk.CifarVGG().eval())
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(fused, (x,))
    ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert ops.count("simplecnn.conv3x3_relu_maxpool2d.default") == 4, ops
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(buffer).module()(x), fused(x))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_backend_reaches_the_fused_layers(backend):
    fused = sk.fuse(sk.CifarVGG(), backend=backend)
    assert {m.backend for m in fused.modules() if isinstance(m, FUSED)} == {backend}
