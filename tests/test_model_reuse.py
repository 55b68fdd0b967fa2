"""The ClientApp's reused model copy: every call still starts from the template, alone.

:func:`simulations.app.client_app.fresh_model` hands one copy out again instead of a
new deep copy; nothing a call did to it (weights, BatchNorm statistics, modes,
gradients, swapped layers, hooks) may reach the next call, and a copy still held
(a job alive, a call left running) is never handed out twice.
"""

from __future__ import annotations

import torch
from torch import nn

from clients.train import replace_modules
from simulations.app import client_app

BN_MODEL = {"name": "cnn6_fedsparsify", "in_channels": 3, "num_classes": 10, "image_size": 32}
MLP = {"name": "mlp", "in_channels": 1, "num_classes": 10, "image_size": 8}


def template_of(cfg: dict) -> nn.Module:
    return client_app._model_template(
        cfg["name"], int(cfg["in_channels"]), int(cfg["num_classes"]), int(cfg["image_size"])
    )


def assert_like_template(model: nn.Module, cfg: dict) -> None:
    template = template_of(cfg)
    assert model is not template
    got, want = model.state_dict(), template.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert [type(m) for m in model.modules()] == [type(m) for m in template.modules()]
    assert [m.training for m in model.modules()] == [m.training for m in template.modules()]
    assert all(p.grad is None for p in model.parameters())


def train_a_little(model: nn.Module, cfg: dict) -> None:
    """A call's worth of changes: a step of SGD (weights, grads, BN running stats), eval mode."""
    size = int(cfg["image_size"])
    x = torch.randn(8, int(cfg["in_channels"]), size, size)
    y = torch.randint(0, int(cfg["num_classes"]), (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    model.eval()


def test_a_reused_copy_carries_nothing_from_the_previous_call_batchnorm_included():
    first = client_app.fresh_model(BN_MODEL)
    first_id = id(first)
    train_a_little(first, BN_MODEL)
    bn = next(m for m in first.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 1  # the call did change the buffers
    del first, bn  # the call ends
    second = client_app.fresh_model(BN_MODEL)
    assert id(second) == first_id  # reused, not copied again
    assert_like_template(second, BN_MODEL)


def test_the_call_after_a_trained_one_starts_from_the_template():
    """A first node's call trains; the next node's call gets a model equal to the template."""
    first = client_app.fresh_model(MLP)
    train_a_little(first, MLP)
    del first
    second = client_app.fresh_model(MLP)
    assert_like_template(second, MLP)


def test_a_copy_still_held_is_not_handed_out_again():
    held = client_app.fresh_model(MLP)
    other = client_app.fresh_model(MLP)
    assert other is not held
    pairs = zip(held.parameters(), other.parameters(), strict=True)
    assert all(a.data_ptr() != b.data_ptr() for a, b in pairs)
    train_a_little(held, MLP)
    assert_like_template(other, MLP)


def test_a_copy_whose_layers_were_swapped_is_replaced_by_a_new_copy():
    model = client_app.fresh_model(MLP)
    swapped = replace_modules(model, lambda name, m: isinstance(m, nn.ReLU), lambda m: nn.Tanh())
    assert swapped > 0
    first_id = id(model)
    del model
    again = client_app.fresh_model(MLP)
    assert id(again) != first_id
    assert_like_template(again, MLP)


def test_a_copy_given_a_hook_or_a_frozen_parameter_is_replaced():
    model = client_app.fresh_model(MLP)
    model.register_forward_hook(lambda module, args, out: out * 0)
    first_id = id(model)
    del model
    again = client_app.fresh_model(MLP)
    assert id(again) != first_id
    assert not any(m._forward_hooks for m in again.modules())
    next(again.parameters()).requires_grad_(False)
    second_id = id(again)
    del again
    third = client_app.fresh_model(MLP)
    assert id(third) != second_id
    assert all(p.requires_grad for p in third.parameters())
    assert_like_template(third, MLP)


def test_a_template_built_again_after_eviction_gets_a_new_copy():
    first = client_app.fresh_model(MLP)
    del first
    client_app._model_template.cache_clear()  # as when more model configs than the cache holds passed
    assert_like_template(client_app.fresh_model(MLP), MLP)
