"""A tiny Speech Commands v2 tree (real layout, generated 16 kHz wav files) for the tests."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SR = 16_000
#: keyword -> tone frequency (Hz) of its clips, so classes differ audibly.
WORDS = {"yes": 400.0, "no": 900.0, "up": 1800.0, "cat": 3500.0}
SPEAKERS = ("0a1b2c3d", "1f2e3d4c", "9e8d7c6b")
UTTERANCES = 2


def write_wav(path: Path, samples: np.ndarray, rate: int = SR, channels: int = 1) -> None:
    """Write float samples in [-1, 1] as 16-bit PCM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def make_speech_commands(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """Write ``root/<word>/<speaker>_nohash_<k>.wav``, the two lists and background noise.

    Utterance 1 of speaker ``SPEAKERS[2]`` is in the test list, utterance 1 of
    ``SPEAKERS[1]`` in the validation list, everything else is training data.
    Clips are 0.6-1.0 s long (real clips may be shorter than one second).

    Returns
    -------
    dict
        ``{"train": [...], "valid": [...], "test": [...]}`` relative paths.
    """
    rng = np.random.default_rng(seed)
    files: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for word, freq in WORDS.items():
        for spk in SPEAKERS:
            for k in range(UTTERANCES):
                n = int(SR * rng.uniform(0.6, 1.0))
                t = np.arange(n) / SR
                clip = 0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(n)
                rel = f"{word}/{spk}_nohash_{k}.wav"
                write_wav(root / rel, clip)
                split = {(SPEAKERS[2], 1): "test", (SPEAKERS[1], 1): "valid"}.get((spk, k), "train")
                files[split].append(rel)
    (root / "testing_list.txt").write_text("\n".join(files["test"]) + "\n")
    (root / "validation_list.txt").write_text("\n".join(files["valid"]) + "\n")
    for i in range(2):
        write_wav(root / "_background_noise_" / f"noise_{i}.wav", 0.3 * rng.standard_normal(int(1.5 * SR)))
    (root / "_background_noise_" / "README.md").write_text("noise recordings\n")
    return files
