"""ONNX export (torch.onnx.export(..., dynamo=True)) gives standard ONNX ops for fused models,
while eager, torch.compile and torch.export keep the fused ops."""

import numpy as np
import pytest
import torch

import simplecnn_kernels as sk

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

POOLED = torch.ops.simplecnn.conv3x3_relu_maxpool2d.default
UNPOOLED = torch.ops.simplecnn.conv3x3_relu2d.default
# What the exporter makes of conv2d/relu/max_pool2d/flatten/linear: ONNX's default domain only.
STANDARD_OPS = {"Conv", "Relu", "MaxPool", "Gemm", "MatMul", "Add", "Flatten", "Reshape"}


def _model(name):
    torch.manual_seed(0)
    if name == "FusedSimpleCNN":
        return sk.FusedSimpleCNN().eval()
    return sk.fuse(sk.CifarVGG().eval())  # both ops: four pooled blocks, one unpooled


def _targets(graph_module):
    return {n.target for n in graph_module.graph.nodes if n.op == "call_function"}


def _fused_forward_calls(fn):
    """How often the compiled kernel ran in fn() (the C++ op the cpu backend calls)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name == "simplecnn::_fused_forward" for e in prof.events())


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-batch"])
@pytest.mark.parametrize("name", ["FusedSimpleCNN", "fused-CifarVGG"])
def test_onnx_export_gives_standard_ops_matching_pytorch(name, dynamic):
    model = _model(name)
    x = torch.randn(2, 3, 32, 32)
    expected_ops = {POOLED} if name == "FusedSimpleCNN" else {POOLED, UNPOOLED}
    assert expected_ops <= _targets(torch.export.export(model, (x,)).graph_module)

    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.onnx.export(
        model, (x,), dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False
    )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert not proto.functions
    op_types = {n.op_type for n in proto.graph.node}
    assert {"Conv", "Relu", "MaxPool"} <= op_types <= STANDARD_OPS, op_types
    if name == "fused-CifarVGG":  # 5 convs, each followed by a Relu; 4 pools
        assert [n.op_type for n in proto.graph.node].count("Conv") == 5
        assert [n.op_type for n in proto.graph.node].count("MaxPool") == 4

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (input_name,) = [i.name for i in session.get_inputs()]
    for batch in (1, 2, 5) if dynamic else (2,):
        x = torch.randn(batch, 3, 32, 32)
        (got,) = session.run(None, {input_name: x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        # float32 through different conv algorithms (the CPU kernel's Winograd, ORT's MLAS)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_torchscript_exporter_gives_standard_ops(tmp_path):
    # The legacy exporter (dynamo=False) traces with torch.jit: the ops see plain tensors, not
    # under Dynamo, so the public functions must notice the jit tracing state.
    model = _model("fused-CifarVGG")
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False)
    proto = onnx.load(str(path))
    op_types = [n.op_type for n in proto.graph.node]
    assert {"Conv", "Relu", "MaxPool"} <= set(op_types) <= STANDARD_OPS, op_types
    assert op_types.count("Conv") == 5 and op_types.count("MaxPool") == 4
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_eager_compile_and_export_keep_the_ops():
    model = _model("fused-CifarVGG")
    x = torch.randn(4, 3, 32, 32)
    assert _fused_forward_calls(lambda: model(x)) == 5  # eager: our kernels, no decomposition
    ep = torch.export.export(model, (x,))
    assert {POOLED, UNPOOLED} <= _targets(ep.graph_module)
    assert {POOLED, UNPOOLED} <= _targets(ep.run_decompositions().graph_module)  # core ATen
    ep_dyn = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("b")},))
    assert {POOLED, UNPOOLED} <= _targets(ep_dyn.graph_module)
    for dynamic in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(model, dynamic=dynamic)
        compiled(x)
        assert _fused_forward_calls(lambda c=compiled: c(torch.randn(6, 3, 32, 32))) == 5


def test_an_exported_program_converts_after_run_decompositions():
    model = _model("fused-CifarVGG")
    x = torch.randn(3, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    assert {POOLED, UNPOOLED} <= _targets(ep.graph_module)  # exported before: the ops are there
    proto = torch.onnx.export(
        ep.run_decompositions(sk.decompositions()), dynamo=True, verbose=False
    ).model_proto
    assert {"Conv", "Relu", "MaxPool"} <= {n.op_type for n in proto.graph.node} <= STANDARD_OPS
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}


def test_compile_with_the_ci_environment_variable(monkeypatch):
    # Inductor refuses ops with a decomposition in torch._decomp's global table when CI is set
    # (make_fallback): the ops must not have one.
    monkeypatch.setenv("CI", "1")
    torch._dynamo.reset()
    model = _model("fused-CifarVGG")
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
