"""FedGKT's split models: a tiny edge ResNet and a large server ResNet.

In Group Knowledge Transfer (He et al., NeurIPS 2020) each client trains
the small edge model and uploads, per sample, the 16-channel feature map
produced by the edge model's stem together with its logits; the server
model consumes those feature maps. Both models here follow FedML's
reference code in ``python/fedml/model/cv/resnet56_gkt/``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import Bottleneck, fedml_resnet_init, make_bottleneck_stage

__all__ = ["GKT_FEATURE_CHANNELS", "GKTEdgeResNet", "GKTServerResNet"]

#: Channels of the feature map the edge model hands to the server model.
GKT_FEATURE_CHANNELS = 16


class GKTEdgeResNet(nn.Module):
    """FedGKT edge model ``resnet8_56`` (registry name ``resnet8_56``).

    ``conv3x3(in, 16) + BN + ReLU`` stem, whose output is the feature map
    sent to the server, then one stage of 2 Bottleneck blocks (width 16,
    64 output channels, stride 1), global average pool and
    ``Linear(64, num_classes)``. 10,586 trainable parameters at 3 input
    channels and 10 classes.

    Source: ``FedML-AI/FedML``, ``python/fedml/model/cv/resnet56_gkt/
    resnet_client.py`` (``resnet8_56``: ``ResNet(Bottleneck, [2, 2, 2])``
    whose ``layer2``/``layer3`` are commented out, so only ``layer1`` is
    built; its unused ``maxpool`` has no parameters and is dropped).

    Parameters
    ----------
    in_channels : int
        Input channels (3 for CIFAR).
    num_classes : int
        Number of output classes.

    Notes
    -----
    ``forward`` returns a **tuple** ``(logits, features)``, unlike every
    other model in the zoo: ``logits`` is ``(N, num_classes)`` and
    ``features`` is the stem output of shape ``(N, 16, H, W)`` (same spatial
    size as the input), the server model's input.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, GKT_FEATURE_CHANNELS, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(GKT_FEATURE_CHANNELS)
        self.layer1 = make_bottleneck_stage(GKT_FEATURE_CHANNELS, 16, blocks=2, stride=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16 * Bottleneck.expansion, num_classes)
        fedml_resnet_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify a batch and expose the features shared with the server.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape ``(N, in_channels, H, W)``.

        Returns
        -------
        logits : torch.Tensor
            Shape ``(N, num_classes)``.
        features : torch.Tensor
            Stem output, shape ``(N, 16, H, W)``.
        """
        features = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(features)
        logits = self.fc(torch.flatten(self.avgpool(out), 1))
        return logits, features


class GKTServerResNet(nn.Module):
    """FedGKT server model (``resnet56_server`` / ``resnet110_server``).

    FedML's 3-stage Bottleneck ResNet *without its stem*: it takes the
    edge model's ``(N, 16, H, W)`` feature map, runs Bottleneck stages of
    widths 16/32/64 (strides 1/2/2), global average pool and
    ``Linear(256, num_classes)``.

    * ``resnet56_server``: ``blocks=(6, 6, 6)``, 590,858 trainable
      parameters at 10 classes.
    * ``resnet110_server``: ``blocks=(12, 12, 12)``, 1,147,274 at 10 classes.

    Source: ``FedML-AI/FedML``, ``python/fedml/model/cv/resnet56_gkt/
    resnet_server.py`` (``resnet56_server``: ``ResNet(Bottleneck, [6, 6, 6])``).
    FedML has no ``resnet110_server``; the ``[12, 12, 12]`` variant mirrors
    FedML's ``resnet110`` in ``python/fedml/model/cv/resnet.py``.

    Parameters
    ----------
    num_classes : int
        Number of output classes.
    blocks : Sequence[int]
        Bottleneck blocks per stage (three entries).

    Notes
    -----
    FedML's server class still constructs the stem ``conv1``/``bn1`` but
    never calls it in ``forward``; those 464 dead parameters are omitted
    here (FedML's count = ours + 464), since they would only receive zero
    gradients and distort parameter or sparsity statistics.
    """

    def __init__(self, num_classes: int, blocks: Sequence[int]) -> None:
        super().__init__()
        if len(blocks) != 3:
            raise ValueError(f"GKTServerResNet needs 3 stage depths, got {tuple(blocks)}")
        self.layer1 = make_bottleneck_stage(GKT_FEATURE_CHANNELS, 16, blocks[0], stride=1)
        self.layer2 = make_bottleneck_stage(64, 32, blocks[1], stride=2)
        self.layer3 = make_bottleneck_stage(128, 64, blocks[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * Bottleneck.expansion, num_classes)
        fedml_resnet_init(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Classify from edge features.

        Parameters
        ----------
        features : torch.Tensor
            Edge-model feature map of shape ``(N, 16, H, W)``.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(N, num_classes)``.
        """
        x = self.layer3(self.layer2(self.layer1(features)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
