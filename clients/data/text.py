"""WikiText-2 (raw token files) as fixed-length next-token windows.

Layout under ``root`` (the extracted ``wikitext-2`` archive, as PyTorch's
``word_language_model`` example reads it)::

    root/wiki.train.tokens  root/wiki.valid.tokens  root/wiki.test.tokens

Tokenisation follows that example's ``data.Corpus``: every line is split on
whitespace and ends with an ``<eos>`` token.  The vocabulary is built on the
training file only (ids in order of first occurrence); a word of the test file
that the training file lacks maps to ``<unk>`` (WikiText already replaced rare
words by ``<unk>``, so on the real data this does not happen).

The token stream of a split is cut into consecutive non-overlapping windows of
:data:`BPTT` tokens: sample ``i`` is ``tokens[i*BPTT : (i+1)*BPTT]`` with target
``tokens[i*BPTT+1 : (i+1)*BPTT+1]``.  This is the example's ``get_batch`` with
``bptt`` 35; the Transformer keeps no state between windows, so batching
windows in any order trains the same model (an LSTM would need the example's
column-wise ``batchify`` to carry its hidden state).  ``partition=contiguous``
gives every client one contiguous shard of windows (a contiguous piece of the
corpus).  The validation file is unused, as CINIC-10's validation split.
"""

from __future__ import annotations

import os

import torch

__all__ = ["BPTT", "EOS", "UNK", "WIKITEXT2_FILES", "build_vocab", "load_wikitext2", "tokenize", "windows"]

#: Sequence length of one sample (``--bptt`` of the word_language_model example).
BPTT = 35
EOS, UNK = "<eos>", "<unk>"
WIKITEXT2_FILES = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")


def tokenize(path: str) -> list[str]:
    """Whitespace tokens of a file, each line followed by ``<eos>``."""
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            out += [*line.split(), EOS]
    return out


def build_vocab(tokens: list[str]) -> dict[str, int]:
    """Word -> id in order of first occurrence (``<unk>`` always present)."""
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    vocab.setdefault(UNK, len(vocab))
    return vocab


def windows(ids: torch.Tensor, bptt: int = BPTT) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping ``bptt``-token inputs and their next-token targets."""
    n = (ids.numel() - 1) // bptt
    x = ids[: n * bptt].view(n, bptt)
    y = ids[1 : n * bptt + 1].view(n, bptt)
    return x.contiguous(), y.contiguous()


def load_wikitext2(root: str, max_vocab: int) -> tuple[torch.Tensor, ...]:
    """Train and test windows of WikiText-2 as int64 ``N x BPTT`` tensors.

    Parameters
    ----------
    root : str
        Directory holding the three ``wiki.*.tokens`` files.
    max_vocab : int
        Size of the model's output layer (the dataset spec's ``num_classes``);
        a larger training vocabulary is an error.

    Returns
    -------
    tuple of torch.Tensor
        ``x_train, y_train, x_test, y_test``.

    """
    train = tokenize(os.path.join(root, WIKITEXT2_FILES[0]))
    vocab = build_vocab(train)
    if len(vocab) > max_vocab:
        raise ValueError(f"WikiText-2 copy at {root!r} has {len(vocab)} words, more than {max_vocab}.")
    unk = vocab[UNK]
    test = tokenize(os.path.join(root, WIKITEXT2_FILES[2]))
    out: list[torch.Tensor] = []
    for toks in (train, test):
        ids = torch.tensor([vocab.get(t, unk) for t in toks], dtype=torch.int64)
        out += windows(ids)
    return tuple(out)
