"""The Transformer LM and the training loop's language-model path (token targets, clipping)."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, TensorDataset

from clients.data.text import windows
from clients.models.registry import build_model, count_params
from clients.train import TrainHooks, evaluate_model, make_optimizer, train_loop


def _lm(vocab: int = 50):
    torch.manual_seed(0)
    return build_model("transformer_lm", 1, vocab, 35)


def test_transformer_lm_is_causal_and_sized_like_the_reference():
    model = _lm().eval()
    x = torch.randint(0, 50, (2, 35))
    out = model(x)
    assert out.shape == (2, 50, 35)  # N x V x S: class dimension second
    changed = x.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 50
    # Positions before 20 cannot see the changed future tokens.
    torch.testing.assert_close(model(changed)[:, :, :20], out[:, :, :20])
    assert not torch.allclose(model(changed)[:, :, 20:], out[:, :, 20:])
    # emsize 200, nhid 200, 2 layers: embedding + decoder + 2 encoder layers.
    layer = 4 * (200 * 200 + 200) + (200 * 200 + 200) * 2 + 2 * 2 * 200
    assert count_params(_lm(33278)) == 33278 * 200 + (200 * 33278 + 33278) + 2 * layer


def _toy_loader(vocab: int = 50) -> DataLoader:
    ids = torch.arange(35 * 40 + 1) % 7  # a periodic stream: perfectly predictable
    x, y = windows(ids)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def test_train_loop_learns_next_tokens_and_counts_tokens():
    model, loader = _lm(), _toy_loader()
    before = evaluate_model(model, loader, torch.device("cpu"))
    opt = make_optimizer(model.parameters(), "adam", lr=1e-3)
    stats = train_loop(model, loader, opt, epochs=3, device=torch.device("cpu"))
    after = evaluate_model(model, loader, torch.device("cpu"))
    assert stats.num_examples == 40  # sequences, not tokens
    assert before.num_examples == 40
    assert after.loss < 0.5 * before.loss and after.accuracy > 0.9
    assert 0.0 <= before.accuracy <= 1.0  # accuracy is per token, so still a fraction
    assert math.isclose(after.perplexity, math.exp(after.loss))


def test_gradient_clipping_bounds_the_norm_before_each_step():
    norms: list[float] = []

    def record(model):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def run(clip):
        norms.clear()
        model = _lm()
        hooks = TrainHooks(after_step=[record], clip_grad_norm=clip)
        train_loop(
            model,
            _toy_loader(),
            make_optimizer(model.parameters(), "sgd", lr=0.5),
            1,
            torch.device("cpu"),
            hooks,
        )
        return list(norms)

    clipped = run(None)  # None: the model's own clip_grad_norm, 0.25
    assert len(clipped) == 5 and max(clipped) <= 0.25 + 1e-5
    assert max(run(0.0)) > 1.0  # 0 disables clipping: the same steps exceed the bound
