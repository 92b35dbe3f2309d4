"""fuse(model): every Conv2d(3x3, stride 1, pad 1) -> ReLU -> MaxPool2d(2, 2) chain of a model
replaced by the fused op.

The chains are found with torch.fx symbolic tracing, which sees modules and functional calls
alike (nn.ReLU, F.relu, torch.relu, x.relu(), inplace or not; nn.MaxPool2d, F.max_pool2d,
torch.max_pool2d), in either order of ReLU and pool (they commute). A model that does not trace
is searched for chains inside its nn.Sequential containers instead. The fused layer takes the
conv's place and name, so state_dict keys stay those of the original model.

A chain is left alone when an intermediate result is used elsewhere, when its conv module is
also called elsewhere (fusing would change that other call), or when a setting differs:
kernel other than 3x3, stride, padding other than 1, dilation, groups, padding_mode, or a pool
other than 2x2 stride 2 without padding, ceil_mode or indices.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from .models import Conv3x3ReLUMaxPool2d

logger = logging.getLogger(__name__)

_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)


def fuse(model: nn.Module, backend: str | None = None) -> nn.Module:
    """A copy of the model with its conv3x3 -> ReLU -> maxpool2x2 chains fused; `model` itself
    is left unchanged.

    Args:
        model: any nn.Module.
        backend: the fused layers' backend (None: the best for the tensors' device).

    Returns:
        The rewritten model: a torch.fx.GraphModule when the model traces, else the model with
        its nn.Sequential containers rewritten. Its ``fused_layers`` attribute lists the names
        of the fused layers (the convs' names).
    """
    model = copy.deepcopy(model)
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:  # any tracing failure: data-dependent control flow, unsupported ops
        logger.info(
            "fuse: %s does not trace (%s); fusing inside nn.Sequential", type(model).__name__, error
        )
        fused = _fuse_sequentials(model, backend)
        result = model
    else:
        fused = _fuse_graph(traced, backend)
        result = traced
    result.fused_layers = fused
    logger.info("fuse: fused %d chain(s): %s", len(fused), ", ".join(fused) or "none")
    return result


# --- what can be fused -------------------------------------------------------------------------


def _conv_fusable(module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.padding == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pool_fusable(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, indices=False):
    stride = kernel_size if stride is None or stride == [] or stride == () else stride
    return (
        _pair(kernel_size) == (2, 2)
        and _pair(stride) == (2, 2)
        and _pair(padding) == (0, 0)
        and _pair(dilation) == (1, 1)
        and not ceil_mode
        and not indices
    )


# --- torch.fx graphs ----------------------------------------------------------------------------


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_pool(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return type(m) is nn.MaxPool2d and _pool_fusable(
            m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
        )
    if node.op != "call_function" or node.target not in (F.max_pool2d, torch.max_pool2d):
        return False
    # F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices);
    # torch.max_pool2d takes the same positions, without return_indices.
    names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    given = dict(zip(names, node.args[1:], strict=False)) | dict(node.kwargs)
    if "kernel_size" not in given:
        return False
    return _pool_fusable(
        given["kernel_size"],
        given.get("stride"),
        given.get("padding", 0),
        given.get("dilation", 1),
        given.get("ceil_mode", False),
        given.get("return_indices", False),
    )


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _fuse_graph(gm: fx.GraphModule, backend: str | None) -> list[str]:
    modules = dict(gm.named_modules())
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    fused = []
    for conv in list(gm.graph.nodes):
        if conv.op != "call_module" or not _conv_fusable(modules[conv.target]):
            continue
        if calls[conv.target] > 1:  # one module called at several places
            continue
        middle = _only_user(conv)  # conv -> relu -> pool, or conv -> pool -> relu
        last = _only_user(middle) if middle is not None else None
        if last is None or len(middle.args) < 1 or middle.args[0] is not conv:
            continue
        if last.args[0] is not middle:
            continue
        chain = (_is_relu(middle, modules) and _is_pool(last, modules)) or (
            _is_pool(middle, modules) and _is_relu(last, modules)
        )
        if not chain:
            continue
        # The fused layer takes the conv's name, so the state_dict keys stay the same.
        layer = Conv3x3ReLUMaxPool2d.from_conv2d(modules[conv.target], backend=backend)
        gm.set_submodule(conv.target, layer)
        last.replace_all_uses_with(conv)
        gm.graph.erase_node(last)
        gm.graph.erase_node(middle)
        fused.append(conv.target)
    if fused:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return fused


# --- nn.Sequential containers ------------------------------------------------------------------


def _fuse_sequentials(model: nn.Module, backend: str | None) -> list[str]:
    """Fuses consecutive Conv2d, ReLU, MaxPool2d children (either order of the last two) of
    every nn.Sequential: the conv becomes the fused layer, the other two nn.Identity, so the
    children keep their indices and the state_dict its keys."""
    # How often each module appears in the model: a conv shared with another place stays.
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    fused = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq)
        for i in range(len(children) - 2):
            conv, a, b = children[i : i + 3]
            pools = [m for m in (a, b) if type(m) is nn.MaxPool2d]
            relus = [m for m in (a, b) if type(m) is nn.ReLU]
            if not (_conv_fusable(conv) and len(pools) == 1 and len(relus) == 1):
                continue
            if uses[id(conv)] > 1:
                continue
            pool = pools[0]
            if not _pool_fusable(
                pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode,
                pool.return_indices,
            ):  # fmt: skip
                continue
            seq[i] = Conv3x3ReLUMaxPool2d.from_conv2d(conv, backend=backend)
            seq[i + 1], seq[i + 2] = nn.Identity(), nn.Identity()
            children = list(seq)
            fused.append(f"{name}.{i}" if name else str(i))
    return fused
