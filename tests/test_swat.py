"""SWAT layers: sparse forward, sparse-activation weight gradient, thresholds, FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from clients.flops import count_flops
from clients.models import build_model
from clients.swat import (
    SwatConfig,
    SwatConv2d,
    SwatLinear,
    swat_flops,
    swat_layer_names,
    swat_layers,
    swatify,
    topk_keep_count,
    topk_mask,
    topk_threshold,
)


def hand_linear() -> nn.Linear:
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.9, 0.3], [0.5, -0.2, 0.8]]))
        layer.bias.copy_(torch.tensor([0.01, -0.02]))
    return layer


def test_topk_rule_by_hand():
    x = torch.tensor([0.1, -0.9, 0.3, 0.5, -0.2, 0.8])
    assert float(topk_threshold(x, 0.5)) == pytest.approx(0.5)  # k = 3: 0.9, 0.8, 0.5
    assert topk_mask(x, 0.5).tolist() == [False, True, False, True, False, True]
    assert topk_keep_count(10, 0.3) == 3  # 0.3 * 10 = 3.0000000000000004 in floats
    assert topk_keep_count(10, 0.31) == 4 and topk_keep_count(10, 1e-6) == 1
    # Ties at the threshold are all kept (SWAT's reference rule).
    assert topk_mask(torch.tensor([1.0, 1.0, 0.5]), 0.34).sum() == 2


def test_linear_forward_is_dense_forward_with_topk_weights_by_hand():
    dense = hand_linear()
    swat = SwatLinear.from_dense(dense, SwatConfig(sparsity=0.5))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # top-3 of |W|: -0.9, 0.5, 0.8
    masked = torch.tensor([[0.0, -0.9, 0.0], [0.5, 0.0, 0.8]])
    expected = x @ masked.t() + dense.bias
    torch.testing.assert_close(swat(x), expected)
    torch.testing.assert_close(expected, torch.tensor([[-1.79, 2.88]]))
    swat.eval()
    torch.testing.assert_close(swat(x), expected)  # inference also uses the top-K weights


def test_linear_weight_grad_uses_topk_activations_and_input_grad_sparse_weights():
    dense = hand_linear()
    swat = SwatLinear.from_dense(dense, SwatConfig(sparsity=0.5))
    x = torch.tensor([[1.0, -4.0, 0.5], [2.0, 0.25, -3.0]], requires_grad=True)
    out = swat(x)
    grad_out = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    out.backward(grad_out)
    # top-3 of |x|: -4, -3, 2
    x_topk = torch.tensor([[0.0, -4.0, 0.0], [2.0, 0.0, -3.0]])
    torch.testing.assert_close(dense.weight.grad, grad_out.t() @ x_topk)
    torch.testing.assert_close(dense.weight.grad, torch.tensor([[-2.0, -4.0, 3.0], [1.0, -8.0, -1.5]]))
    masked = torch.tensor([[0.0, -0.9, 0.0], [0.5, 0.0, 0.8]])
    torch.testing.assert_close(x.grad, grad_out @ masked)
    torch.testing.assert_close(dense.bias.grad, grad_out.sum(0))
    # The weight gradient is dense where activations allow it: weights outside the
    # forward top-K still get gradient (the trained model stays dense).
    assert dense.weight.grad[0, 0] != 0 and masked[0, 0] == 0


def test_conv2d_matches_dense_ops_on_masked_tensors():
    torch.manual_seed(0)
    dense = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    swat = SwatConv2d.from_dense(dense, SwatConfig(sparsity=0.8))
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    out = swat(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    w_mask = topk_mask(dense.weight, 0.2)
    x_mask = topk_mask(x, 0.2)
    assert int(w_mask.sum()) == topk_keep_count(dense.weight.numel(), 0.2) == 11
    assert int(x_mask.sum()) == 29
    w_sparse = (dense.weight * w_mask).detach().requires_grad_()
    x_sparse = (x * x_mask).detach().requires_grad_()
    torch.testing.assert_close(out, F.conv2d(x, w_sparse, dense.bias, 2, 1))
    F.conv2d(x_sparse, w_sparse, None, 2, 1).backward(grad_out)
    torch.testing.assert_close(dense.weight.grad, w_sparse.grad)
    torch.testing.assert_close(x.grad, _input_grad(x, w_sparse.detach(), grad_out))
    torch.testing.assert_close(dense.bias.grad, grad_out.sum((0, 2, 3)))


def _input_grad(x, weight, grad_out):
    x = x.detach().requires_grad_()
    F.conv2d(x, weight, None, 2, 1).backward(grad_out)
    return x.grad


def test_conv2d_hand_check_one_by_one():
    dense = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        dense.weight.copy_(torch.tensor([1.0, -0.1]).reshape(1, 2, 1, 1))
    swat = SwatConv2d.from_dense(dense, SwatConfig(sparsity=0.5))
    x = torch.tensor([[[[3.0, 0.5]], [[-0.2, 4.0]]]])  # 1x2x1x2: channel 0 = [3, .5]
    out = swat(x)
    torch.testing.assert_close(out, torch.tensor([[[[3.0, 0.5]]]]))  # only w[0] = 1.0
    out.backward(torch.ones_like(out))
    # top-2 of |x| keep 3.0 and 4.0: dW[c] = sum over positions of x_topk[c]
    torch.testing.assert_close(dense.weight.grad.reshape(-1), torch.tensor([3.0, 4.0]))


def test_threshold_refresh_period_and_warmup():
    layer = SwatLinear(4, 1, bias=False, config=SwatConfig(sparsity=0.5, period=3, warmup=0))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    x = torch.ones(1, 4)
    layer(x)  # step 0: threshold = 3.0
    assert float(layer.weight_threshold) == 3.0
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 0.5, 9.0, 8.0]]))
    # step 1: stale threshold 3.0 keeps 9 and 8 (not recomputed), step 2 too
    torch.testing.assert_close(layer(x), torch.tensor([[17.0]]))
    layer(x)
    assert float(layer.weight_threshold) == 3.0
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[10.0, 9.0, 2.0, 1.0]]))
    layer(x)  # step 3: refreshed
    assert float(layer.weight_threshold) == 9.0

    warm = SwatLinear(4, 1, bias=False, config=SwatConfig(sparsity=0.5, period=100, warmup=2))
    with torch.no_grad():
        warm.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    warm(x)
    with torch.no_grad():
        warm.weight.copy_(torch.tensor([[1.0, 2.0, 6.0, 5.0]]))
    warm(x)  # step 1 < warmup: refreshed
    assert float(warm.weight_threshold) == 5.0
    with torch.no_grad():
        warm.weight.copy_(torch.tensor([[7.0, 8.0, 1.0, 1.0]]))
    warm(x)  # step 2: stale
    assert float(warm.weight_threshold) == 5.0
    steps = warm.steps
    warm.eval()
    warm(x)
    assert warm.steps == steps  # evaluation does not advance the schedule


def test_swatify_keeps_parameter_names_and_state_dicts_load():
    model = build_model("resnet18", 3, 10, 32)
    keys = list(model.state_dict())
    names = swat_layer_names(model)
    assert names[0] != "conv1" and "conv1" in dict(model.named_modules())
    assert swatify(model, SwatConfig(0.9), names) == len(names) == 20
    assert list(model.state_dict()) == keys
    fresh = build_model("resnet18", 3, 10, 32)
    model.load_state_dict(fresh.state_dict())
    fresh.load_state_dict(model.state_dict())
    assert set(swat_layers(model)) == set(names)
    first_last = swat_layer_names(build_model("mlp", 1, 10, 8), sparsify_first=True, sparsify_last=False)
    assert first_last == ["net.1", "net.3"]


def test_flops_dense_count_matches_flop_counter_and_sparse_count_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    batch = torch.randn(2, 1, 5, 5)
    reference = count_flops(model, batch, training=True)
    swatify(model, SwatConfig(sparsity=0.0), swat_layer_names(model, sparsify_first=True))
    model(batch).sum().backward()
    dense, sparse = swat_flops(model)
    assert dense == reference
    assert sparse <= dense  # ReLU zeros count as sparse activations even at sparsity 0

    layer = SwatLinear(4, 2, config=SwatConfig(sparsity=0.5))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    layer(x).sum().backward()
    # dense: forward, weight grad, input grad = 3 * 2 * rows(3) * numel(W)(8)
    assert layer.flops_dense == 3 * 2 * 3 * 8
    # sparse: forward + input grad 2*3*nnz(W)=2*3*4 each; weight grad 2*out*nnz(X)=2*2*6
    assert layer.flops_swat == 2 * (2 * 3 * 4) + 2 * 2 * 6


def test_swat_model_trains_with_one_loop():
    from torch.utils.data import DataLoader, TensorDataset

    from clients.train import make_optimizer, train_loop

    torch.manual_seed(0)
    model = build_model("mlp", 1, 10, 8)
    swatify(model, SwatConfig(0.9), swat_layer_names(model))
    data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    before = model.state_dict()["net.3.weight"].clone()
    stats = train_loop(
        model,
        DataLoader(data, batch_size=16),
        make_optimizer(model.parameters(), "sgd", 0.1),
        1,
        torch.device("cpu"),
    )
    after = model.state_dict()["net.3.weight"]
    changed = (after != before).float().mean()
    assert stats.steps == 4 and changed > 0.5  # dense weight gradient: most weights move


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("period", [None, 1, 10])
def test_both_layer_types_compute_thresholds_as_often_as_the_period_says(kind, period, monkeypatch):
    import clients.swat as swat_module

    calls = []
    real = swat_module.topk_threshold

    def counting(tensor, keep):
        calls.append(tuple(tensor.shape))
        return real(tensor, keep)

    monkeypatch.setattr(swat_module, "topk_threshold", counting)
    config = SwatConfig(sparsity=0.5) if period is None else SwatConfig(sparsity=0.5, period=period)
    torch.manual_seed(0)
    if kind == "linear":
        layer = SwatLinear(6, 3, config=config)
        batch = (4, 6)
    else:
        layer = SwatConv2d(2, 3, 3, padding=1, config=config)
        batch = (4, 2, 5, 5)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    n_batches = 25
    for _ in range(n_batches):
        optimizer.zero_grad()
        layer(torch.randn(*batch)).square().mean().backward()
        optimizer.step()
    expected = -(-n_batches // config.period)  # batches 0, p, 2p, ...
    if period is None:
        assert expected == n_batches  # the default refreshes at every batch
    assert layer.refreshes == expected
    # Each refresh computes the weight and the activation threshold, nothing else does.
    assert len(calls) == 2 * expected
    assert calls[0] == tuple(layer.weight.shape) and calls[1] == batch
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(*batch))
    # Evaluation takes the current top-K weights (one weight threshold) and is no refresh.
    assert layer.refreshes == expected and calls[2 * expected :] == [tuple(layer.weight.shape)]


def test_swat_method_default_is_a_refresh_every_batch():
    from hydra import compose, initialize_config_dir

    from clients.methods.swat import swat_config
    from simulations import CONF_DIR

    for method in ("swat", "zerofl"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=[f"method={method}"])
        assert cfg.method.topk_period == 1
        assert swat_config(dict(cfg.method)).period == 1
    assert SwatConfig().period == 1


def _kthvalue_threshold(x: torch.Tensor, keep: float) -> torch.Tensor:
    """The k-th largest |x| by torch.kthvalue (the selection the numpy path replaced)."""
    flat = x.detach().abs().reshape(-1).float()
    k = topk_keep_count(flat.numel(), keep)
    return flat.kthvalue(flat.numel() - k + 1).values.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("keep", [0.05, 0.1, 0.37, 1.0])
def test_threshold_equals_kthvalue_with_ties(dtype, keep):
    gen = torch.Generator().manual_seed(4)
    for values in (
        torch.randn(257, generator=gen),
        torch.randint(-3, 4, (300,), generator=gen).float(),  # many ties and zeros
        torch.zeros(10),
    ):
        x = values.to(dtype)
        assert topk_threshold(x, keep).dtype == dtype
        assert topk_threshold(x, keep).item() == _kthvalue_threshold(x, keep).item()


class _DirectCount:
    """Sparse FLOPs counted directly from each training forward's inputs (a forward hook).

    Uses the thresholds the layer holds after the forward (those the forward used) and
    recounts nonzeros of the masked weight and activations.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer, self.flops = layer, 0
        layer.register_forward_hook(self.hook)

    def hook(self, layer, inputs, out) -> None:
        if not (layer.training and torch.is_grad_enabled()):
            return
        (x,) = inputs
        if isinstance(layer, SwatConv2d):
            x = F.pad(x, layer._reversed_padding_repeated_twice) if layer.padding_mode != "zeros" else x
            positions = out.numel() // layer.out_channels
        else:
            positions = x.numel() // layer.in_features
        w = layer.weight.detach()
        # Counted through numpy: the test watches the layer's own tensor reads.
        nnz_w = int(np.count_nonzero((w * (w.abs() >= layer.weight_threshold)).numpy()))
        nnz_x = int(np.count_nonzero((x.detach() * (x.detach().abs() >= layer.act_threshold)).numpy()))
        passes = 1 + int(x.requires_grad)
        dense_one = 2 * positions * w.numel()
        self.flops += 2 * positions * nnz_w * passes + round(dense_one * nnz_x / x.numel())


@pytest.mark.parametrize("config", [SwatConfig(sparsity=0.9), SwatConfig(sparsity=0.7, period=3, warmup=2)])
def test_sparse_flops_equal_a_direct_count_and_read_the_device_once(config, monkeypatch):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 3),
    )
    swatify(model, config, swat_layer_names(model, sparsify_first=True))
    layers = list(swat_layers(model).values())
    direct = [_DirectCount(layer) for layer in layers]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    reads = []
    for name in ("__int__", "item", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor,
            name,
            lambda self, *a, _real=real, _name=name: (reads.append(_name), _real(self, *a))[1],
        )
    for step in range(7):
        optimizer.zero_grad()
        model(torch.randn(5, 1, 5, 5)).square().mean().backward()
        optimizer.step()
        if step == 3:
            # A read in between settles the counts so far; later steps add to them.
            assert reads == []
            assert [layer.flops_swat for layer in layers] == [d.flops for d in direct]
            reads.clear()
    # Training forwards never wait for the device: the nonzero counts stay tensors.
    assert reads == []
    sparse = [layer.flops_swat for layer in layers]
    assert reads == ["tolist"] * len(layers)  # one transfer per layer when the FLOPs are read
    monkeypatch.undo()
    assert sparse == [d.flops for d in direct]
    assert 0 < sum(sparse) < swat_flops(model)[0]
