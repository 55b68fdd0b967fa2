"""CIFAR-style residual networks.

Two families live here:

* ``ResNet18`` -- the 4-stage BasicBlock ResNet-18 (64..512 channels) used
  by GWPF, with a 3x3 stem and no max-pool.
* ``FedMLResNet`` -- FedML's 3-stage CIFAR ResNet (16/32/64 planes). FedML
  builds ``resnet56`` and ``resnet110`` from *Bottleneck* blocks
  (expansion 4), not from the BasicBlocks of He et al. (2016); FedGKT
  compares against these FedML models, so ``resnet56``/``resnet110`` here
  follow FedML. The Bottleneck pieces are shared with :mod:`.gkt`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "FedMLResNet",
    "ResNet18",
    "fedml_resnet_init",
    "make_bottleneck_stage",
]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # Bias-free: every conv is followed by BatchNorm, whose shift makes a bias redundant.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity or 1x1-projection shortcut.

    Parameters
    ----------
    in_planes : int
        Input channels.
    planes : int
        Output channels.
    stride : int, optional
        Stride of the first conv and of the projection, by default 1.
    """

    expansion: int = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(_conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(N, in_planes, H, W)``.

        Returns
        -------
        torch.Tensor
            Output of shape ``(N, planes, H / stride, W / stride)``.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) block, as in torchvision/FedML.

    The stride sits on the 3x3 conv (the "ResNet v1.5" placement FedML
    copies from torchvision).

    Parameters
    ----------
    in_planes : int
        Input channels.
    planes : int
        Bottleneck width; the block outputs ``planes * 4`` channels.
    stride : int, optional
        Stride of the 3x3 conv and of the projection, by default 1.
    """

    expansion: int = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = _conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                _conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(N, in_planes, H, W)``.

        Returns
        -------
        torch.Tensor
            Output of shape ``(N, 4 * planes, H / stride, W / stride)``.
        """
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


def make_bottleneck_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """Stack ``blocks`` Bottlenecks; only the first may stride or project.

    Parameters
    ----------
    in_planes : int
        Channels entering the stage.
    planes : int
        Bottleneck width; the stage outputs ``planes * 4`` channels.
    blocks : int
        Number of Bottleneck blocks.
    stride : int
        Stride of the first block.

    Returns
    -------
    torch.nn.Sequential
        The stage.
    """
    layers = [Bottleneck(in_planes, planes, stride)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def fedml_resnet_init(model: nn.Module) -> None:
    """Apply FedML's ResNet initialisation in place.

    Kaiming-normal (fan-out, ReLU gain) conv weights, BatchNorm scale 1 and
    shift 0. Copied so that training curves are comparable with FedML's
    runs, which start from this init rather than PyTorch's default
    Kaiming-uniform.

    Parameters
    ----------
    model : torch.nn.Module
        Model whose submodules are initialised.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FedMLResNet(nn.Module):
    """FedML's 3-stage Bottleneck ResNet for CIFAR (``resnet56``, ``resnet110``).

    ``conv3x3(in, 16) + BN + ReLU`` stem (no max-pool), three Bottleneck
    stages with widths 16/32/64 (outputs 64/128/256 channels; strides
    1/2/2), global average pool, ``Linear(256, num_classes)``.

    * ``resnet56``: ``blocks=(6, 6, 6)``, 591,322 trainable parameters
      at 10 classes (614,452 at 100).
    * ``resnet110``: ``blocks=(12, 12, 12)``, 1,147,738 at 10 classes.

    Source: ``FedML-AI/FedML``, ``python/fedml/model/cv/resnet.py``
    (``resnet56``: ``ResNet(Bottleneck, [6, 6, 6])``, ``resnet110``:
    ``ResNet(Bottleneck, [12, 12, 12])``); the same network is
    ``resnet56_pretrained`` in ``python/fedml/model/cv/resnet56/``. These are
    *not* He et al.'s BasicBlock ResNet-56/110 (0.85M / 1.7M parameters);
    with 3-layer blocks, "56" really means 3 * 6 * 3 + 2 = 56 layers.

    Parameters
    ----------
    in_channels : int
        Input channels (3 for CIFAR).
    num_classes : int
        Number of output classes.
    blocks : Sequence[int]
        Bottleneck blocks per stage (three entries).

    Notes
    -----
    Returns only logits (FedML's ``forward`` in ``resnet.py`` is truncated
    and its KD flag unused).
    """

    def __init__(self, in_channels: int, num_classes: int, blocks: Sequence[int]) -> None:
        super().__init__()
        if len(blocks) != 3:
            raise ValueError(f"FedMLResNet needs 3 stage depths, got {tuple(blocks)}")
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = make_bottleneck_stage(16, 16, blocks[0], stride=1)
        self.layer2 = make_bottleneck_stage(64, 32, blocks[1], stride=2)
        self.layer3 = make_bottleneck_stage(128, 64, blocks[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64 * Bottleneck.expansion, num_classes)
        fedml_resnet_init(self)

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
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 as used by GWPF (registry name ``resnet18``).

    ``conv3x3(in, 64) + BN + ReLU`` stem without max-pool, four BasicBlock
    stages (2 blocks each; 64/128/256/512 channels; strides 1/2/2/2), global
    average pool, ``Linear(512, num_classes)``. 11,173,962 trainable
    parameters at ``3 x 32 x 32`` and 10 classes.

    Source: ``Dora233/GWPF``, ``models/ResNet.py`` (``ResNet18_Cifar10``).

    Parameters
    ----------
    in_channels : int
        Input channels (3 for CIFAR).
    num_classes : int
        Number of output classes.

    Notes
    -----
    The reference pools with ``avg_pool2d(out, 4)``, which equals a global
    average pool for 32x32 (and 28x28) inputs, where the last map is 4x4;
    the adaptive pool keeps other sizes working without changing anything
    at 32x32.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
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
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
