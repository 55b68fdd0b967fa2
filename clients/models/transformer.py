"""The 2-layer Transformer language model of PyTorch's ``word_language_model``.

The GWPF reference trains its WikiText-2 model (``W1``) with that example's
``TransformerModel``: token embedding scaled by ``sqrt(emsize)``, sinusoidal
positional encoding, ``nn.TransformerEncoder`` with a causal mask, a linear
decoder, uniform(-0.1, 0.1) initialisation of the embedding and decoder.
Defaults here are emsize 200, nhead 2, nhid 200, 2 layers, dropout 0.2.

Differences, for the one training loop: inputs are batch-first ``N x S`` token
ids, and ``forward`` returns raw logits laid out ``N x V x S`` (class dimension
second, as ``nn.CrossEntropyLoss`` and ``argmax(1)`` expect) rather than the
example's ``S x N x V`` log-softmax.  ``clip_grad_norm`` (0.25, the example's
``--clip``) is read by :func:`clients.train.train_loop`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TransformerLM"]


class _PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, dropout: float, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe, persistent=False)  # not a weight: never on the wire

    def forward(self, x: Tensor) -> Tensor:  # x: N x S x E
        return self.dropout(x + self.pe[: x.size(1)])


class TransformerLM(nn.Module):
    """Causal Transformer language model returning ``N x V x S`` next-token logits.

    Parameters
    ----------
    ntoken : int
        Vocabulary size.
    emsize, nhead, nhid, nlayers : int
        Embedding width, attention heads, feed-forward width, encoder layers.
    dropout : float
        Dropout of the positional encoding and every encoder layer.

    """

    #: Gradient-norm clipping the training loop applies (``--clip`` of the example).
    clip_grad_norm: float = 0.25

    def __init__(
        self,
        ntoken: int,
        emsize: int = 200,
        nhead: int = 2,
        nhid: int = 200,
        nlayers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.emsize = emsize
        self.encoder = nn.Embedding(ntoken, emsize)
        self.pos_encoder = _PositionalEncoding(emsize, dropout)
        layer = nn.TransformerEncoderLayer(emsize, nhead, nhid, dropout, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.decoder = nn.Linear(emsize, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, src: Tensor) -> Tensor:
        """``N x S`` token ids -> ``N x V x S`` logits of the next token at every position."""
        seq = src.size(1)
        mask = torch.triu(torch.full((seq, seq), float("-inf"), device=src.device), diagonal=1)
        h = self.pos_encoder(self.encoder(src) * math.sqrt(self.emsize))
        h = self.transformer_encoder(h, mask=mask, is_causal=True)
        return self.decoder(h).transpose(1, 2)
