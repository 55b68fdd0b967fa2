"""VGG-style networks from the reference papers' code."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cnn import keras_batchnorm2d

__all__ = ["VGG11EMNIST", "VGG16FedSparsify"]

# "M" marks a 2x2 max-pool; integers are 3x3 conv output channels.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
    512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
# GWPF's slimmed VGG-11: VGG-11's 8-conv layout with narrower widths (32..256, not 64..512).
_VGG11_SLIM_CFG: tuple[int | str, ...] = (
    32, "M", 64, "M", 128, 128, "M", 128, 256, "M", 256, 256, "M",
)  # fmt: skip


def _make_features(
    cfg: Sequence[int | str],
    in_channels: int,
    norm: Callable[[int], nn.Module],
    ceil_mode: bool = False,
) -> nn.Sequential:
    """Build a VGG feature extractor of conv3x3 (bias) + norm + ReLU blocks.

    Parameters
    ----------
    cfg : Sequence[int | str]
        Output channels per conv, ``"M"`` for a 2x2/stride-2 max-pool.
    in_channels : int
        Channels of the input image.
    norm : Callable[[int], torch.nn.Module]
        Factory for the normalisation layer after each conv.
    ceil_mode : bool, optional
        Passed to the max-pools, by default False.

    Returns
    -------
    torch.nn.Sequential
        The feature extractor.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
        else:
            assert isinstance(v, int)
            layers += [
                nn.Conv2d(channels, v, kernel_size=3, padding=1),
                norm(v),
                nn.ReLU(inplace=True),
            ]
            channels = v
    return nn.Sequential(*layers)


class VGG16FedSparsify(nn.Module):
    """FedSparsify's CIFAR VGG-16 with BatchNorm (registry name ``vgg16_fedsparsify``).

    13 conv3x3 layers (with bias) each followed by BatchNorm and ReLU, five
    2x2 max-pools, then a single ``Linear(512, num_classes)`` head (no
    hidden FC layers).

    At ``3 x 32 x 32`` and 100 classes (CIFAR-100) the Keras model reports
    14,782,884 "Total params". That figure includes the BatchNorm moving
    mean and variance (2 x 4,224 = 8,448 entries), which PyTorch keeps as
    buffers, not parameters; the trainable count is 14,774,436. Use
    ``count_params(model, include_bn_buffers=True)`` for the Keras figure.

    Source: ``dstripelis/FedSparsify``, ``models/cifar/cifar_vgg.py``
    (``VGG__`` with config ``'VGG-16'``).

    Parameters
    ----------
    in_channels : int
        Input channels (3 for CIFAR).
    num_classes : int
        Number of output classes.
    image_size : int
        Unused: the head sees a globally pooled 512-vector at any size.
        Kept for the registry's uniform signature.

    Notes
    -----
    The reference flattens a 1x1x512 map (its trailing ``AveragePooling2D``
    with ``pool_size=1`` is a no-op). Here the pools use ``ceil_mode=True``
    and the map is globally average-pooled; both are identities at 32x32,
    so results and parameter count match there, while 28x28 inputs (which
    would shrink to 0x0 in the reference) also work. Returns logits; the
    Keras softmax is left to the loss.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        del image_size
        self.features = _make_features(_VGG16_CFG, in_channels, keras_batchnorm2d, ceil_mode=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape ``(N, in_channels, H, W)``.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(N, num_classes)``.
        """
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class VGG11EMNIST(nn.Module):
    """GWPF's VGG-11 with BatchNorm for EMNIST-balanced (registry name ``vgg11``).

    A slimmed VGG-11: eight conv3x3 layers with widths
    ``32, 64, 128, 128, 128, 256, 256, 256`` (each conv + BatchNorm + ReLU),
    five 2x2 max-pools, then ``256 -> 4096 -> 4096 -> num_classes`` with
    ReLU (no dropout). 19,892,207 trainable parameters at ``1 x 32 x 32``
    and 47 classes.

    Source: ``Dora233/GWPF``, ``models/VGG.py`` (class ``VGG11_EMNIST``).

    Parameters
    ----------
    in_channels : int
        Input channels (1 for EMNIST).
    num_classes : int
        Number of output classes (47 for EMNIST-balanced).
    image_size : int
        Unused: inputs are always brought to 32x32 (see Notes). Kept for
        the registry's uniform signature.

    Notes
    -----
    Five 2x2 pools need at least 32x32 input for the 256-wide classifier;
    GWPF's data loader therefore resizes EMNIST's 28x28 images to 32x32
    (``transforms.Resize(32)`` in ``Dataloader.py``). This model does that
    resize itself (bilinear) whenever the input is not 32x32, so the same
    model accepts 28x28 and 32x32 batches with an unchanged parameter count.
    """

    input_size: int = 32

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        del image_size
        self.features = _make_features(_VGG11_SLIM_CFG, in_channels, nn.BatchNorm2d)
        self.classifier = nn.Sequential(
            nn.Linear(256, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape ``(N, in_channels, H, W)``; resized to 32x32 if
            ``(H, W) != (32, 32)``.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(N, num_classes)``.
        """
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
            )
        return self.classifier(torch.flatten(self.features(x), 1))
