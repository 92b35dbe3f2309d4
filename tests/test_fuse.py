"""fuse(): which chains it fuses, which it leaves, and that the result stays a drop-in."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import simplecnn_kernels as sk

FUSED = sk.Conv3x3ReLUMaxPool2d
UNPOOLED = sk.Conv3x3ReLU2d


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
            nn.MaxPool2d(2, ceil_mode=True),  # ceil: conv + ReLU fused, the pool stays
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
    assert fused.fused_layers == ["features.0", "features.6", "head.0"]
    assert _count(fused, FUSED) == 2 and _count(fused, UNPOOLED) == 1
    assert _count(fused, nn.Conv2d) == 2 and _count(fused, nn.MaxPool2d) == 3  # 5x5, stride; ceil
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
    assert ops.count("simplecnn.conv3x3_relu2d.default") == 1, ops
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(buffer).module()(x), fused(x))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_backend_reaches_the_fused_layers(backend):
    fused = sk.fuse(sk.CifarVGG(), backend=backend)
    assert {m.backend for m in fused.modules() if isinstance(m, FUSED)} == {backend}


# --- BatchNorm -----------------------------------------------------------------------------------


def _randomize_batchnorms(model):
    """Running statistics and affine parameters far from their defaults, negative scales too
    (BatchNorm before the max-pool: a negative scale flips which value is the max)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(-1.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model


def _assert_close_to_float64_stock(stock, fused, x):
    """The fused model's float32 output within 1e-5 x the output scale of the float64 stock
    model (the float32 stock model itself is at ~2e-6 on these models)."""
    with torch.no_grad():
        got = fused(x)
        expected = copy.deepcopy(stock).double()(x.double())
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5 * scale)


class ConvBN(nn.Module):
    """conv -> BatchNorm -> ReLU/pool in both orders, a conv without bias, a BatchNorm without
    affine parameters, and a BatchNorm whose output is also used elsewhere (stays)."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c, self.bn_c = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)
        self.d, self.bn_d = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn_a(self.a(x))), 2)
        x = F.max_pool2d(self.bn_b(self.b(x)), 2).relu()
        x = F.max_pool2d(torch.relu(self.bn_c(self.c(x))), 2)
        y = self.bn_d(self.d(x))
        return F.max_pool2d(F.relu(y), 2) + y.mean()


def test_batchnorm_folded_in_eval_mode():
    model = _randomize_batchnorms(ConvBN()).eval()
    fused = sk.fuse(model)
    assert fused.fused_layers == ["a", "b", "c"]
    assert fused.unfused_layers == {"d": "an intermediate result is used elsewhere"}
    assert _count(fused, nn.BatchNorm2d) == 1  # bn_d
    assert fused.b.bias is not None and fused.b.bias.requires_grad  # folded: a bias now
    _assert_close_to_float64_stock(model, fused, torch.randn(3, 3, 32, 32))


def test_batchnorm_in_training_mode_stays():
    model = _randomize_batchnorms(ConvBN())  # training mode: batch statistics
    fused = sk.fuse(model)
    assert fused.fused_layers == []
    assert "training mode" in fused.unfused_layers["a"]
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(fused(x), model(x))


def test_batchnorm_without_running_stats_stays():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ).eval()
    fused = sk.fuse(model)
    assert fused.fused_layers == [] and "track_running_stats" in fused.unfused_layers["0"]


class ConvBNDoesNotTrace(DoesNotTrace):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.MaxPool2d(2), nn.ReLU()
        )


def test_batchnorm_folded_in_sequentials_of_a_model_that_does_not_trace():
    model = _randomize_batchnorms(ConvBNDoesNotTrace()).eval()
    fused = sk.fuse(model)
    assert fused.fused_layers == ["block.0", "other.0"]
    assert [type(m) for m in fused.block] == [FUSED, nn.Identity, nn.Identity, nn.Identity]
    _assert_close_to_float64_stock(model, fused, torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("model_class", [ConvBN, ConvBNDoesNotTrace])
def test_fused_model_loads_a_state_dict_of_the_stock_model(model_class):
    """The BatchNorm entries of a stock state_dict are folded on load (strict: no key left)."""
    fused = sk.fuse(_randomize_batchnorms(model_class()).eval())
    other = _randomize_batchnorms(model_class()).eval()  # new weights and statistics
    fused.load_state_dict(other.state_dict())
    x = torch.randn(2, 3, 16, 16)
    _assert_close_to_float64_stock(other, fused, x)
    again = sk.fuse(_randomize_batchnorms(model_class()).eval())
    again.load_state_dict(fused.state_dict())  # a fused state_dict: already folded
    with torch.no_grad():
        torch.testing.assert_close(again(x), fused(x))


def test_fused_model_with_folded_batchnorm_pickles():
    """A whole pickled model keeps its folded weights; torch.fx does not keep its fold-on-load
    hook (module hooks are not pickled): loading a stock state_dict into it then fails loudly,
    and fusing the stock model again is the way (README)."""
    fused = sk.fuse(_randomize_batchnorms(ConvBN()).eval())
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fused(x))
    loaded.load_state_dict(fused.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key.*bn_a.running_mean"):
        loaded.load_state_dict(ConvBN().eval().state_dict())


@pytest.mark.parametrize("model_class", [ConvBN, ConvBNDoesNotTrace])
def test_deepcopy_of_a_fused_model_keeps_its_report_and_folds_on_load(model_class):
    # copy.deepcopy (EMA weights, checkpoint averaging): torch.fx rebuilds a GraphModule and
    # keeps only the attributes it is told to.
    fused = sk.fuse(_randomize_batchnorms(model_class()).eval())
    twin = copy.deepcopy(fused)
    assert (twin.fused_layers, twin.unfused_layers) == (fused.fused_layers, fused.unfused_layers)
    assert twin.fused_layers  # not both empty
    other = _randomize_batchnorms(model_class()).eval()
    twin.load_state_dict(other.state_dict())  # BatchNorm folded on load, as in the original
    _assert_close_to_float64_stock(other, twin, torch.randn(2, 3, 16, 16))


def test_unfused_layers_say_why():
    fused = sk.fuse(VGGStyle().eval())
    assert set(fused.unfused_layers) == {"features.3", "features.9"}
    assert "kernel_size" in fused.unfused_layers["features.3"]
    assert "stride" in fused.unfused_layers["features.9"]
    fused = sk.fuse(Functional().eval())
    assert fused.unfused_layers["d"] == "an intermediate result is used elsewhere"
    assert "padding" in fused.unfused_layers["e"] and "groups" in fused.unfused_layers["f"]


class Unpooled(nn.Module):
    """Conv -> [BatchNorm ->] ReLU without a pool, a ReLU output used twice (fused: the fused
    op gives that output), a pool that is not 2x2 after ReLU, and a conv without ReLU."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.e = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = torch.relu(self.bn_b(self.b(x)))
        y = self.c(x).relu()
        x = y + F.max_pool2d(y, 2).mean()
        x = F.max_pool2d(F.relu(self.d(x)), 3, stride=1, padding=1)
        return torch.sigmoid(self.e(x))


def test_conv_relu_without_a_pool_is_fused_unpooled():
    model = _randomize_batchnorms(Unpooled()).eval()
    fused = sk.fuse(model)
    assert fused.fused_layers == ["a", "b", "c", "d"]
    assert all(type(fused.get_submodule(name)) is UNPOOLED for name in fused.fused_layers)
    assert fused.unfused_layers == {"e": "not followed by ReLU (or a 2x2 max-pool and ReLU)"}
    _assert_close_to_float64_stock(model, fused, torch.randn(2, 3, 12, 10))


def test_unpooled_chains_in_sequentials_of_a_model_that_does_not_trace():
    class Model(DoesNotTrace):
        def __init__(self):
            super().__init__()
            self.other = nn.Sequential(
                nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3)
            )

    model = _randomize_batchnorms(Model()).eval()
    fused = sk.fuse(model)
    assert fused.fused_layers == ["block.0", "other.0"]
    assert [type(m) for m in fused.other] == [UNPOOLED, nn.Identity, nn.Identity, nn.MaxPool2d]
    _assert_close_to_float64_stock(model, fused, torch.randn(2, 3, 16, 16))


def test_cifar_vgg_fuses_all_five_convs():
    model = sk.CifarVGG().eval()
    fused = sk.fuse(model)
    assert len(fused.fused_layers) == 5 and _count(fused, UNPOOLED) == 1
    _assert_close_to_float64_stock(model, fused, torch.randn(2, 3, 32, 32))


# --- torchvision's models (random weights, nothing downloaded) -----------------------------------


@pytest.mark.parametrize(("name", "convs"), [("vgg11", 8), ("vgg16_bn", 13)])
def test_torchvision_vgg_every_conv_fused(name, convs):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomize_batchnorms(getattr(torchvision.models, name)(weights=None)).eval()
    fused = sk.fuse(model)
    assert len(fused.fused_layers) == convs and fused.unfused_layers == {}
    assert _count(fused, FUSED) == 5 and _count(fused, UNPOOLED) == convs - 5
    assert _count(fused, nn.Conv2d) == _count(fused, nn.BatchNorm2d) == 0
    _assert_close_to_float64_stock(model, fused, torch.randn(2, 3, 64, 64))


def test_torchvision_resnet_convs_with_relu_fused():
    """ResNet's 3x3 convs followed by BN + ReLU are fused (unpooled); the stem (7x7), the
    convs before the residual add and the downsampling ones stay, each with its reason."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomize_batchnorms(torchvision.models.resnet18(weights=None)).eval()
    fused = sk.fuse(model)
    # conv1 of each BasicBlock with stride 1; conv2 feeds the residual add, not a ReLU.
    assert fused.fused_layers == ["layer1.0.conv1", *(f"layer{i}.1.conv1" for i in (1, 2, 3, 4))]
    assert "kernel_size" in fused.unfused_layers["conv1"]
    assert "stride" in fused.unfused_layers["layer2.0.conv1"]
    assert "not followed by ReLU" in fused.unfused_layers["layer4.1.conv2"]
    assert all(type(fused.get_submodule(n)) is UNPOOLED for n in fused.fused_layers)
    _assert_close_to_float64_stock(model, fused, torch.randn(2, 3, 64, 64))
