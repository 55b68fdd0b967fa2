"""A tiny WikiText-2 tree (raw token files) for the tests."""

from __future__ import annotations

from pathlib import Path

SENTENCES = ("the cat sat on the mat .", "a dog ran in the park .", "= = heading = =", "")


def make_wikitext2(root: Path, repeats: int = 30) -> dict[str, str]:
    """Write ``wiki.{train,valid,test}.tokens``; the test file has one out-of-vocabulary word."""
    root.mkdir(parents=True, exist_ok=True)
    train = "\n".join(SENTENCES * repeats) + "\n"
    test = "\n".join(("the cat ran in the park .", "a zebra sat on the mat .") * 6) + "\n"
    texts = {"train": train, "valid": test, "test": test}
    for split, text in texts.items():
        (root / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    return texts
