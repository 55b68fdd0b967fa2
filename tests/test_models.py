"""Tests for the model zoo in ``clients.models``."""

from __future__ import annotations

import pytest
import torch

from clients.models import MODEL_NAMES, build_model, count_params

# name -> (in_channels, image_size, num_classes) of the reference setting.
REFERENCE_SHAPES: dict[str, tuple[int, int, int]] = {
    "mlp": (1, 8, 10),  # sklearn digits
    "fc2_fedsparsify": (1, 28, 10),  # Fashion-MNIST
    "cnn6_fedsparsify": (3, 32, 10),  # CIFAR-10
    "vgg16_fedsparsify": (3, 32, 100),  # CIFAR-100
    "cnn_mnist_gwpf": (1, 28, 10),  # MNIST
    "resnet18": (3, 32, 10),  # CIFAR-10
    "vgg11": (1, 28, 47),  # EMNIST-balanced
    "resnet56": (3, 32, 10),
    "resnet110": (3, 32, 10),
    "resnet8_56": (3, 32, 10),
    "resnet56_server": (3, 32, 10),
    "resnet110_server": (3, 32, 10),
    "transformer_lm": (1, 35, 33278),  # WikiText-2: 35-token windows, 33,278 words
}

# Trainable parameter counts at the reference shapes. Sources (see the model
# docstrings): FedSparsify = dstripelis/FedSparsify models/fashion_mnist_fc.py,
# models/cifar/cifar_cnn.py, models/cifar/cifar_vgg.py; GWPF = Dora233/GWPF
# models/{CNN,ResNet,VGG}.py; FedML = FedML-AI/FedML python/fedml/model/cv/
# resnet.py and resnet56_gkt/resnet_{client,server}.py.
EXPECTED_PARAMS: dict[str, int] = {
    "mlp": 85_002,
    "fc2_fedsparsify": 118_282,
    "cnn6_fedsparsify": 1_609_930,
    "vgg16_fedsparsify": 14_774_436,  # Keras total incl. BN moving stats: 14,782,884
    "cnn_mnist_gwpf": 582_026,
    "resnet18": 11_173_962,
    "vgg11": 19_892_207,
    "resnet56": 591_322,
    "resnet110": 1_147_738,
    "resnet8_56": 10_586,
    "resnet56_server": 590_858,  # FedML's class also holds a dead 464-param stem
    "resnet110_server": 1_147_274,
    # PyTorch word_language_model TransformerModel(33278, 200, 2, 200, 2) on WikiText-2.
    "transformer_lm": 13_828_478,
}

SERVER_MODELS = {"resnet56_server", "resnet110_server"}
TOKEN_MODELS = {"transformer_lm"}
FEATURE_CHANNELS = 16


def _build(name: str) -> torch.nn.Module:
    in_channels, image_size, num_classes = REFERENCE_SHAPES[name]
    return build_model(name, in_channels, num_classes, image_size)


def test_registry_covers_all_models() -> None:
    assert isinstance(MODEL_NAMES, tuple)
    assert set(MODEL_NAMES) == set(REFERENCE_SHAPES) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_count(name: str) -> None:
    assert count_params(_build(name)) == EXPECTED_PARAMS[name]


def test_fedsparsify_keras_total_counts() -> None:
    # Keras' "Total params" also counts BatchNorm moving mean/variance.
    assert count_params(_build("vgg16_fedsparsify"), include_bn_buffers=True) == 14_782_884
    assert count_params(_build("cnn6_fedsparsify"), include_bn_buffers=True) == 1_610_314
    # No BatchNorm in the FC model, so both conventions agree.
    assert count_params(_build("fc2_fedsparsify"), include_bn_buffers=True) == 118_282


def test_count_params_skips_frozen() -> None:
    model = _build("fc2_fedsparsify")
    for p in model.net[1].parameters():  # first Linear: 784*128 + 128
        p.requires_grad_(False)
    assert count_params(model) == 118_282 - 100_480


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape(name: str) -> None:
    in_channels, image_size, num_classes = REFERENCE_SHAPES[name]
    model = _build(name).eval()
    channels = FEATURE_CHANNELS if name in SERVER_MODELS else in_channels
    x = torch.randn(2, channels, image_size, image_size)
    if name in TOKEN_MODELS:  # token ids in, N x vocab x sequence logits out
        x = torch.randint(0, num_classes, (2, image_size))
    with torch.no_grad():
        out = model(x)
    if name in TOKEN_MODELS:
        assert out.shape == (2, num_classes, image_size) and torch.isfinite(out).all()
        return
    if name == "resnet8_56":
        logits, features = out
        assert features.shape == (2, FEATURE_CHANNELS, image_size, image_size)
    else:
        logits = out
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "in_channels", "image_size", "num_classes"),
    [
        ("cnn6_fedsparsify", 1, 28, 10),
        ("vgg16_fedsparsify", 1, 28, 47),
        ("cnn_mnist_gwpf", 3, 32, 10),
        ("resnet18", 1, 28, 47),
        ("vgg11", 1, 32, 47),
        ("resnet56", 1, 28, 10),
        ("mlp", 3, 32, 10),
    ],
)
def test_forward_other_sizes(name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    model = build_model(name, in_channels, num_classes, image_size).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, image_size, image_size))
    assert logits.shape == (2, num_classes)


def test_vgg11_size_independent() -> None:
    # GWPF resizes EMNIST to 32x32; the model does it itself, so the same
    # weights serve 28x28 and 32x32 inputs.
    assert count_params(build_model("vgg11", 1, 47, 28)) == count_params(build_model("vgg11", 1, 47, 32))


def test_gkt_edge_feeds_server() -> None:
    edge = build_model("resnet8_56", 3, 10, 32).eval()
    server = build_model("resnet56_server", 3, 10, 32).eval()
    with torch.no_grad():
        _, features = edge(torch.randn(2, 3, 32, 32))
        assert server(features).shape == (2, 10)


def test_gkt_edge_is_much_smaller_than_resnet56() -> None:
    edge = count_params(build_model("resnet8_56", 3, 10, 32))
    ratio56 = count_params(build_model("resnet56", 3, 10, 32)) / edge
    ratio110 = count_params(build_model("resnet110", 3, 10, 32)) / edge
    print(f"resnet56 / resnet8_56 = {ratio56:.1f}x, resnet110 / resnet8_56 = {ratio110:.1f}x")
    # FedGKT claims the edge model has >= 54x fewer parameters than ResNet-56.
    assert ratio56 >= 54
    assert ratio56 == pytest.approx(55.86, abs=0.01)
    assert ratio110 == pytest.approx(108.42, abs=0.01)


def test_unknown_model_raises() -> None:
    with pytest.raises(ValueError, match="no_such_model") as excinfo:
        build_model("no_such_model", 3, 10, 32)
    for name in MODEL_NAMES:
        assert name in str(excinfo.value)


def test_non_positive_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", 1, 0, 8)
