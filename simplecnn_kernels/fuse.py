"""fuse(model): every Conv2d(3x3, stride 1, pad 1) [-> BatchNorm2d] -> ReLU [-> MaxPool2d(2, 2)]
chain of a model replaced by a fused op: conv3x3_relu_maxpool2d with the pool, conv3x3_relu2d
without it.

The chains are found with torch.fx symbolic tracing, which sees modules and functional calls
alike (nn.ReLU, F.relu, torch.relu, x.relu(), inplace or not; nn.MaxPool2d, F.max_pool2d,
torch.max_pool2d), in either order of ReLU and pool (they commute); a ReLU not followed by a
fusable pool makes an unpooled chain. A model that does not trace is searched for chains inside
its nn.Sequential containers instead. The fused layer takes the conv's place and name, so
state_dict keys stay those of the original model (but for folded BatchNorms', whose entries go
into the layer's weight and bias).

A BatchNorm2d right after the conv is folded into the fused layer's weight and bias when it
normalises with running statistics (eval mode). The folded values are computed at fuse time;
loading a state_dict of the original model into the fused one folds its BatchNorm entries again
(_FoldOnLoad). In training mode BatchNorm normalises with batch statistics, which no fixed
weight expresses: such chains stay stock.

A chain is also left alone when a result before the ReLU is used elsewhere (a ReLU output used
several times is fused, unpooled), when one of its modules is called elsewhere (fusing would
change that other call), or when a setting differs: kernel other than 3x3, stride, padding
other than 1, dilation, groups, padding_mode, or a pool other than 2x2 stride 2 without
padding, ceil_mode or indices (after the ReLU, conv and ReLU are fused without it; before the
ReLU, the chain stays). The result's ``unfused_layers`` says, for every Conv2d left, why.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .models import Conv3x3ReLU2d, Conv3x3ReLUMaxPool2d, conv_mismatch

logger = logging.getLogger(__name__)

_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)
# GraphModule.__deepcopy__ rebuilds the module from its graph and submodules, then sets the
# attributes listed under this key of its `meta` (torch.fx.graph_module's
# _USER_PRESERVED_ATTRIBUTES_KEY); others are lost.
_FX_PRESERVED_ATTRIBUTES = "_user_preserved_attributes"


def fuse(model: nn.Module, backend: str | None = None) -> nn.Module:
    """A copy of the model with its conv3x3 [-> BatchNorm2d] -> ReLU [-> maxpool2x2] chains
    fused; `model` itself is left unchanged.

    Args:
        model: any nn.Module. BatchNorm layers are folded only in eval mode: call
            ``model.eval()`` first.
        backend: the fused layers' backend (None: the best for the tensors' device).

    Returns:
        The rewritten model: a torch.fx.GraphModule when the model traces, else the model with
        its nn.Sequential containers rewritten. Its ``fused_layers`` lists the names of the
        fused layers (the convs' names; Conv3x3ReLUMaxPool2d or Conv3x3ReLU2d modules there),
        ``unfused_layers`` maps the name of every other Conv2d to the reason it stayed stock.
    """
    model = copy.deepcopy(model)
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:  # any tracing failure: data-dependent control flow, unsupported ops
        logger.info(
            "fuse: %s does not trace (%s); fusing inside nn.Sequential", type(model).__name__, error
        )
        report = _fuse_sequentials(model, backend)
        result = model
    else:
        report = _fuse_graph(traced, backend)
        result = traced
    result.fused_layers = report.fused
    result.unfused_layers = report.left
    if isinstance(result, fx.GraphModule):  # its deepcopy keeps only attributes named here
        preserved = result.meta.setdefault(_FX_PRESERVED_ATTRIBUTES, {})
        preserved.update(fused_layers=report.fused, unfused_layers=report.left)
    if report.batchnorms:
        result.register_load_state_dict_pre_hook(_FoldOnLoad(report.batchnorms))
    logger.info("fuse: fused %d chain(s): %s", len(report.fused), ", ".join(report.fused) or "none")
    for name, reason in report.left.items():
        logger.info("fuse: left %s: %s", name, reason)
    return result


@dataclass
class _Report:
    fused: list[str] = field(default_factory=list)
    batchnorms: dict[str, tuple[str, float]] = field(default_factory=dict)  # conv: (bn, eps)
    left: dict[str, str] = field(default_factory=dict)  # conv: why it stayed stock


class _FoldOnLoad:
    """load_state_dict pre-hook of a fused model: a state_dict of the original model holds, for
    each folded chain, the conv's own weight and bias and the BatchNorm's entries; they are
    folded into the fused layer's weight and bias as fuse() folded them. A fused model's own
    state_dict (no BatchNorm entries) loads as it is. A class, not a closure, so that fused
    models pickle."""

    def __init__(self, batchnorms: dict[str, tuple[str, float]]) -> None:
        self.batchnorms = batchnorms

    def __call__(self, module, state_dict, prefix, *args) -> None:
        for conv, (bn, eps) in self.batchnorms.items():
            weight = f"{prefix}{conv}.weight"
            if f"{prefix}{bn}.running_mean" not in state_dict or weight not in state_dict:
                continue
            entries = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            stats = {k: state_dict.pop(f"{prefix}{bn}.{k}", None) for k in entries}
            with torch.no_grad():
                folded_weight, folded_bias = fuse_conv_bn_weights(
                    state_dict[weight],
                    state_dict.get(f"{prefix}{conv}.bias"),
                    stats["running_mean"],
                    stats["running_var"],
                    eps,
                    stats["weight"],
                    stats["bias"],
                )
            state_dict[weight] = folded_weight.data
            state_dict[f"{prefix}{conv}.bias"] = folded_bias.data


# --- what can be fused -------------------------------------------------------------------------


def _conv_problem(module: nn.Module) -> str | None:
    if type(module) is not nn.Conv2d:
        return f"{type(module).__name__} is not nn.Conv2d"
    wrong = conv_mismatch(module)
    return f"settings {wrong}" if wrong else None


def _batchnorm_problem(module: nn.Module) -> str | None:
    if module.training:
        return "its BatchNorm2d is in training mode (batch statistics): fuse model.eval()"
    if module.running_mean is None:
        return "its BatchNorm2d has no running statistics (track_running_stats=False)"
    return None


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


def _pool_module_fusable(m: nn.Module) -> bool:
    return type(m) is nn.MaxPool2d and _pool_fusable(
        m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
    )


_NO_RELU = "not followed by ReLU (or a 2x2 max-pool and ReLU)"


# --- torch.fx graphs ----------------------------------------------------------------------------


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_batchnorm(node: fx.Node | str, modules: dict) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and type(modules[node.target]) is nn.BatchNorm2d
    )


def _is_pool(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return _pool_module_fusable(modules[node.target])
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


def _next(node: fx.Node) -> fx.Node | str:
    """The one node using `node`'s result, taking it as its first argument; else why not."""
    users = list(node.users)
    if len(users) > 1:
        return "an intermediate result is used elsewhere"
    if not users or not users[0].args or users[0].args[0] is not node:
        return _NO_RELU
    return users[0]


def _graph_chain(conv: fx.Node, modules: dict, calls: Counter) -> list[fx.Node] | str:
    """The nodes after `conv` of a fusable chain ([BatchNorm,] ReLU and pool in either order, or
    [BatchNorm,] ReLU alone), or why there is none."""
    if calls[conv.target] > 1:
        return "the conv module is called at several places"
    chain = []
    node = _next(conv)
    if _is_batchnorm(node, modules):
        problem = _batchnorm_problem(modules[node.target])
        if problem is not None:
            return problem
        if calls[node.target] > 1:
            return "its BatchNorm2d module is called at several places"
        chain.append(node)
        node = _next(node)
    if isinstance(node, str):
        return node
    last = _next(node)
    if _is_relu(node, modules):
        pooled = isinstance(last, fx.Node) and _is_pool(last, modules)
        return [*chain, node, last] if pooled else [*chain, node]
    if _is_pool(node, modules) and isinstance(last, fx.Node) and _is_relu(last, modules):
        return [*chain, node, last]
    return last if isinstance(last, str) and _is_pool(node, modules) else _NO_RELU


def _fuse_graph(gm: fx.GraphModule, backend: str | None) -> _Report:
    modules = dict(gm.named_modules())
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    report = _Report()
    for conv in list(gm.graph.nodes):
        if conv.op != "call_module" or not isinstance(modules[conv.target], nn.Conv2d):
            continue
        chain = _conv_problem(modules[conv.target]) or _graph_chain(conv, modules, calls)
        if isinstance(chain, str):
            report.left[conv.target] = chain
            continue
        bn = chain[0] if _is_batchnorm(chain[0], modules) else None
        batchnorm = modules[bn.target] if bn is not None else None
        pooled = any(_is_pool(node, modules) for node in chain)
        layer_class = Conv3x3ReLUMaxPool2d if pooled else Conv3x3ReLU2d
        # The fused layer takes the conv's name, so the state_dict keys stay the same.
        layer = layer_class.from_conv2d(modules[conv.target], backend, batchnorm)
        gm.set_submodule(conv.target, layer)
        chain[-1].replace_all_uses_with(conv)
        for node in reversed(chain):
            gm.graph.erase_node(node)
        report.fused.append(conv.target)
        if batchnorm is not None:
            report.batchnorms[conv.target] = (bn.target, batchnorm.eps)
    if report.fused:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return report


# --- nn.Sequential containers ------------------------------------------------------------------


def _sequential_chain(children: list[nn.Module], i: int, uses: Counter) -> tuple[int, bool] | str:
    """The length of the fusable chain at children[i] (a Conv2d) and whether it pools, or why
    there is none."""
    if uses[id(children[i])] > 1:
        return "the conv module is used at several places"
    j = i + 1
    if j < len(children) and type(children[j]) is nn.BatchNorm2d:
        problem = _batchnorm_problem(children[j])
        if problem is not None:
            return problem
        if uses[id(children[j])] > 1:
            return "its BatchNorm2d module is used at several places"
        j += 1
    pair = children[j : j + 2]
    pools = [m for m in pair if _pool_module_fusable(m)]
    relus = [m for m in pair if type(m) is nn.ReLU]
    if len(pools) == 1 and len(relus) == 1:
        return j + 2 - i, True
    if pair and type(pair[0]) is nn.ReLU:
        return j + 1 - i, False
    return _NO_RELU


def _fuse_sequentials(model: nn.Module, backend: str | None) -> _Report:
    """Fuses chains of consecutive children (Conv2d, [BatchNorm2d,] ReLU and MaxPool2d in
    either order, or ReLU alone) of every nn.Sequential: the conv becomes the fused layer, the
    others nn.Identity, so the children keep their indices and the state_dict its keys."""
    # How often each module appears in the model: a module shared with another place stays.
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    report = _Report()
    in_sequentials = set()
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        prefix = f"{name}." if name else ""
        for i, conv in enumerate(list(seq)):
            if not isinstance(conv, nn.Conv2d):
                continue
            in_sequentials.add(prefix + str(i))
            chain = _conv_problem(conv) or _sequential_chain(list(seq), i, uses)
            if isinstance(chain, str):
                report.left[prefix + str(i)] = chain
                continue
            length, pooled = chain
            batchnorm = seq[i + 1] if type(seq[i + 1]) is nn.BatchNorm2d else None
            layer_class = Conv3x3ReLUMaxPool2d if pooled else Conv3x3ReLU2d
            seq[i] = layer_class.from_conv2d(conv, backend, batchnorm)
            for j in range(i + 1, i + length):
                seq[j] = nn.Identity()
            report.fused.append(prefix + str(i))
            if batchnorm is not None:
                report.batchnorms[prefix + str(i)] = (prefix + str(i + 1), batchnorm.eps)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name not in in_sequentials:
            report.left[name] = "outside nn.Sequential in a model that does not trace"
    return report
