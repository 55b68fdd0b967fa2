"""Name -> constructor registry for the model zoo."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .cnn import CNN6FedSparsify, CNNMnistGWPF
from .gkt import GKTEdgeResNet, GKTServerResNet
from .mlp import digits_mlp, fc2_fedsparsify
from .resnet import FedMLResNet, ResNet18
from .transformer import TransformerLM
from .vgg import VGG11EMNIST, VGG16FedSparsify

__all__ = ["MODEL_NAMES", "build_model", "count_params"]

#: ``(in_channels, num_classes, image_size) -> model``; every entry takes all
#: three so callers (configs, clients) never special-case a model, even when
#: a model ignores an argument.
ModelFactory = Callable[[int, int, int], nn.Module]

_REGISTRY: dict[str, ModelFactory] = {
    "mlp": digits_mlp,
    "fc2_fedsparsify": fc2_fedsparsify,
    "cnn6_fedsparsify": CNN6FedSparsify,
    "vgg16_fedsparsify": VGG16FedSparsify,
    "cnn_mnist_gwpf": CNNMnistGWPF,
    "resnet18": lambda c, k, s: ResNet18(c, k),
    "vgg11": VGG11EMNIST,
    "resnet56": lambda c, k, s: FedMLResNet(c, k, blocks=(6, 6, 6)),
    "resnet110": lambda c, k, s: FedMLResNet(c, k, blocks=(12, 12, 12)),
    "resnet8_56": lambda c, k, s: GKTEdgeResNet(c, k),
    # Server models take the edge model's 16-channel features, so in_channels
    # is ignored.
    "resnet56_server": lambda c, k, s: GKTServerResNet(k, blocks=(6, 6, 6)),
    "resnet110_server": lambda c, k, s: GKTServerResNet(k, blocks=(12, 12, 12)),
    # Language model: num_classes is the vocabulary size; in_channels and
    # image_size (the sequence length) do not size any layer.
    "transformer_lm": lambda c, k, s: TransformerLM(k),
}

#: Registered model names, in registration order.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Instantiate a registered model.

    Parameters
    ----------
    name : str
        Registry name, one of :data:`MODEL_NAMES`.
    in_channels : int
        Channels of the ``N x C x H x W`` input images. Ignored by
        ``resnet56_server``/``resnet110_server``, which take the edge
        model's 16-channel features.
    num_classes : int
        Number of output classes.
    image_size : int
        Height (= width) of the input images. Only models whose layer sizes
        depend on it use it (the MLPs and the plain CNNs).

    Returns
    -------
    torch.nn.Module
        A freshly initialised model. All models return logits, except
        ``resnet8_56`` whose ``forward`` returns ``(logits, features)``.

    Raises
    ------
    ValueError
        If ``name`` is not registered, or the arguments are not positive.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}") from None
    for arg, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
    ):
        if value < 1:
            raise ValueError(f"{arg} must be positive, got {value}")
    return factory(in_channels, num_classes, image_size)


def count_params(model: nn.Module, *, include_bn_buffers: bool = False) -> int:
    """Count a model's trainable parameters.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    include_bn_buffers : bool, optional
        Also count BatchNorm running means and variances, by default False.
        Keras' ``count_params()``/"Total params" includes these (as
        non-trainable weights), so set this to compare with figures quoted
        from Keras models.

    Returns
    -------
    int
        Number of scalar parameters with ``requires_grad=True`` (plus the
        BatchNorm running statistics if requested).
    """
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if include_bn_buffers:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                assert m.running_mean is not None and m.running_var is not None
                total += m.running_mean.numel() + m.running_var.numel()
    return total


def model_dims(run: Mapping[str, Any]) -> dict[str, Any]:
    """Model name and the input/output sizes a run's dataset dictates.

    ``run`` is a run config (``dataset`` and ``model`` sections); the result is what
    clients receive as ``settings["model"]`` and what :func:`build_from_dims` takes.
    """
    from clients.data.specs import get_spec  # light module: no dataset import

    spec = get_spec(run["dataset"]["name"])
    return {
        "name": run["model"]["name"],
        "in_channels": spec.in_channels,
        "num_classes": spec.num_classes,
        "image_size": int(run["dataset"].get("resize") or spec.image_size),
    }


def build_from_dims(dims: Mapping[str, Any]) -> nn.Module:
    """:func:`build_model` from a :func:`model_dims` mapping."""
    return build_model(
        dims["name"], int(dims["in_channels"]), int(dims["num_classes"]), int(dims["image_size"])
    )
