"""Small convolutional classifiers taken from the reference papers' code."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CNN6FedSparsify", "CNNMnistGWPF", "keras_batchnorm2d"]


def keras_batchnorm2d(num_features: int) -> nn.BatchNorm2d:
    """Return a ``BatchNorm2d`` with Keras' default hyper-parameters.

    Keras ``BatchNormalization`` defaults to ``epsilon=1e-3`` and
    ``momentum=0.99`` (weight of the *old* running value); PyTorch's
    ``momentum`` is the weight of the *new* batch statistic, hence 0.01.
    Matching them keeps ports of Keras models numerically comparable.

    Parameters
    ----------
    num_features : int
        Number of channels.

    Returns
    -------
    torch.nn.BatchNorm2d
        The normalisation layer.
    """
    return nn.BatchNorm2d(num_features, eps=1e-3, momentum=0.01)


def _conv3x3_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # Keras Conv2D(padding="same") has a bias by default; keep it so the
    # parameter count matches the reference.
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]


class CNN6FedSparsify(nn.Module):
    """FedSparsify's 6-conv-layer CIFAR CNN (registry name ``cnn6_fedsparsify``).

    Layout (all convolutions 3x3, ``same`` padding, with bias, ReLU)::

        conv64 conv64 maxpool2 BN
        conv128 conv128 maxpool2 BN
        conv128 conv128 maxpool2
        flatten dense512+ReLU dropout(0.2) dense(num_classes)

    At ``3 x 32 x 32`` and 10 classes this has 1,609,930 trainable
    parameters (Keras "Total params" is 1,610,314: it also counts the 768
    BatchNorm moving mean/variance entries).

    Source: ``dstripelis/FedSparsify``, ``models/cifar/cifar_cnn.py`` at
    commit ``5f2b05e3`` (the revision with the two ``BatchNormalization``
    layers; a later revision comments them out, which gives 1,609,546).

    Parameters
    ----------
    in_channels : int
        Input channels (3 for CIFAR).
    num_classes : int
        Number of output classes.
    image_size : int
        Height and width of the square input. The dense layer's input width
        is ``128 * (image_size // 8) ** 2``, as Keras would infer it.

    Notes
    -----
    Returns logits; the Keras model's final softmax is left to the loss.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv3x3_relu(in_channels, 64),
            *_conv3x3_relu(64, 64),
            nn.MaxPool2d(2),
            keras_batchnorm2d(64),
            *_conv3x3_relu(64, 128),
            *_conv3x3_relu(128, 128),
            nn.MaxPool2d(2),
            keras_batchnorm2d(128),
            *_conv3x3_relu(128, 128),
            *_conv3x3_relu(128, 128),
            nn.MaxPool2d(2),
        )
        side = image_size // 2 // 2 // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for three 2x2 poolings")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape ``(N, in_channels, image_size, image_size)``.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(N, num_classes)``.
        """
        return self.classifier(self.features(x))


class CNNMnistGWPF(nn.Module):
    """GWPF's MNIST CNN (registry name ``cnn_mnist_gwpf``).

    ``conv(in, 32, 5x5) -> maxpool2 -> ReLU -> conv(32, 64, 5x5) -> maxpool2
    -> ReLU -> fc(1024, 512) -> ReLU -> fc(512, num_classes)``; no padding.
    582,026 trainable parameters at ``1 x 28 x 28`` and 10 classes.

    Source: ``Dora233/GWPF``, ``models/CNN.py`` (class ``CNN_Mnist``).

    Parameters
    ----------
    in_channels : int
        Input channels (1 for MNIST).
    num_classes : int
        Number of output classes.
    image_size : int
        Height and width of the square input. The reference hard-codes
        ``fc1`` to 1024 inputs, which is right only for 28x28; the width is
        derived from ``image_size`` here so that e.g. 32x32 also works
        (1600 inputs), and equals 1024 at 28.

    Notes
    -----
    The reference ends in ``log_softmax`` but is trained with
    ``CrossEntropyLoss``; since log-softmax is idempotent, returning logits
    gives the same loss and gradients.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for CNNMnistGWPF")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape ``(N, in_channels, image_size, image_size)``.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(N, num_classes)``.
        """
        return self.classifier(self.features(x))
