"""Fully connected classifiers.

Both models flatten an ``N x C x H x W`` input, so they accept any image
shape; the input width of the first layer is ``C * H * W``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "digits_mlp", "fc2_fedsparsify"]


class MLP(nn.Module):
    """Flatten, then a stack of ``Linear`` + ``ReLU`` layers, then a linear head.

    Parameters
    ----------
    in_features : int
        Number of input features after flattening (``C * H * W``).
    hidden : Sequence[int]
        Width of each hidden layer, in order.
    num_classes : int
        Number of output logits.

    Notes
    -----
    The forward pass returns raw logits: pair it with
    ``torch.nn.CrossEntropyLoss``, which applies the log-softmax itself.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(N, C, H, W)`` (or already ``(N, C*H*W)``).

        Returns
        -------
        torch.Tensor
            Logits of shape ``(N, num_classes)``.
        """
        return self.net(x)


def digits_mlp(in_channels: int, num_classes: int, image_size: int) -> MLP:
    """Build the digits MLP (registry name ``mlp``).

    Two hidden layers of 256 units with ReLU. The reference setting is the
    scikit-learn digits data set: ``1 x 8 x 8`` inputs, 10 classes, which
    gives 85,002 trainable parameters.

    Parameters
    ----------
    in_channels : int
        Input channels.
    num_classes : int
        Number of output classes.
    image_size : int
        Height and width of the (square) input.

    Returns
    -------
    MLP
        The model.
    """
    return MLP(in_channels * image_size * image_size, (256, 256), num_classes)


def fc2_fedsparsify(in_channels: int, num_classes: int, image_size: int) -> MLP:
    """Build FedSparsify's Fashion-MNIST 2-hidden-layer FC network.

    ``784 -> 128 -> 128 -> 10`` with ReLU: 118,282 trainable parameters at
    ``1 x 28 x 28`` and 10 classes.

    Source: ``dstripelis/FedSparsify``, ``models/fashion_mnist_fc.py``
    (Keras ``Flatten`` + ``Dense(128, relu)`` x 2 + ``Dense(10, softmax)``).
    The Keras model ends in a softmax; here the head returns logits, since
    ``CrossEntropyLoss`` applies the log-softmax.

    Parameters
    ----------
    in_channels : int
        Input channels.
    num_classes : int
        Number of output classes.
    image_size : int
        Height and width of the (square) input.

    Returns
    -------
    MLP
        The model.
    """
    return MLP(in_channels * image_size * image_size, (128, 128), num_classes)
