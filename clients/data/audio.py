"""Google Speech Commands v2 as ``1 x 32 x 32`` log-Mel spectrograms.

The loader reads the dataset's native layout (the extracted
``speech_commands_v0.02.tar.gz``)::

    root/
      <keyword>/<speaker>_nohash_<k>.wav     16 kHz mono 16-bit PCM, <= 1 s
      validation_list.txt                    one "<keyword>/<file>.wav" per line
      testing_list.txt
      _background_noise_/*.wav               long noise recordings

Splits follow the dataset's own lists (Warden, 2018): the test split is
``testing_list.txt``, the training split every other keyword clip not named in
``validation_list.txt`` (the validation split is unused, as CINIC-10's).

Two label sets, one dataset name each (:mod:`clients.data.specs` fixes the
label space per name):

* ``speech_commands`` -- the 35 keywords of v2, in alphabetical order.
* ``speech_commands12`` -- the 12-class task: the 10 keywords ``yes no up down
  left right on off stop go``, ``_silence_`` and ``_unknown_`` (every other
  keyword; all of them are kept, none is subsampled).  Silence clips are 1-s
  windows of ``_background_noise_`` recordings at seeded random offsets,
  scaled by a seeded random volume in [0, 1]; their number is 10 % of the
  split's keyword clips, TensorFlow's ``silence_percentage`` default
  **(our reading)**.

Which of the two ZeroFL used is not stated in the review kept in
``papers/001`` (it names ResNet-18 only for CIFAR-10); ``speech_commands``
(35 classes) is the default of ``conf/experiment/zerofl_speechcommands*.yaml``
**(our reading)**.

Features **(our reading)**: each clip is zero-padded / cropped to 16,000
samples, turned into a 32-bin Mel spectrogram with ``torchaudio``
(``n_fft`` 1024, 40-ms Hann window, hop 512 -> 32 frames), then
``log(mel + 1e-6)``, and standardised with the mean and std of the training
split, so every sample is a ``1 x 32 x 32`` image that the vision models (e.g.
``resnet18`` with one input channel) take as is.

The speaker id -- the wav file name's prefix before ``_nohash_`` -- is kept as
the writer id of every training clip, so ``partition=natural`` splits clients
by speaker.  Silence clips get a seeded random real speaker.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "KEYWORDS_12",
    "SAMPLE_RATE",
    "SILENCE_FRACTION",
    "SPEECH_COMMANDS_URL",
    "SPEECH_COMMANDS_V2_WORDS",
    "load_speech_commands",
    "log_mel",
    "speech_commands_classes",
    "speech_commands_present",
]

#: Official archive of Speech Commands v2.
SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
#: Sampling rate of every clip, in Hz; clips are cut / padded to one second.
SAMPLE_RATE = 16_000
#: The 35 keywords of Speech Commands v2, alphabetical (the 35-class label order).
SPEECH_COMMANDS_V2_WORDS: tuple[str, ...] = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off",
    "on", "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two",
    "up", "visual", "wow", "yes", "zero",
)  # fmt: skip
#: The ten keywords of the 12-class task (then ``_silence_``, ``_unknown_``).
KEYWORDS_12: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
#: Silence clips per keyword clip of a split (12-class task).
SILENCE_FRACTION = 0.1

_NOISE_DIR = "_background_noise_"
_LISTS = ("validation_list.txt", "testing_list.txt")
_N_MELS, _N_FFT, _WIN, _HOP = 32, 1024, 640, 512


def speech_commands_classes(num_classes: int) -> tuple[str, ...]:
    """Label names, in label-id order, of the 35- or 12-class task."""
    if num_classes == 35:
        return SPEECH_COMMANDS_V2_WORDS
    if num_classes == 12:
        return (*KEYWORDS_12, "_silence_", "_unknown_")
    raise ValueError(f"Speech Commands has a 35- or a 12-class task, not {num_classes}.")


def speech_commands_present(root: str) -> bool:
    """Whether ``root`` looks like an extracted Speech Commands v2 (existence only)."""
    return os.path.isfile(os.path.join(root, "testing_list.txt")) and any(
        os.path.isdir(os.path.join(root, w)) for w in SPEECH_COMMANDS_V2_WORDS
    )


def download_speech_commands(root: str) -> None:
    """Fetch and extract the official v2 archive into ``root`` (needs the network)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(
        SPEECH_COMMANDS_URL,
        download_root=root,
        filename="speech_commands_v0.02.tar.gz",
        remove_finished=True,
    )


def log_mel(waves: torch.Tensor) -> torch.Tensor:
    """``N x 16000`` waveforms -> ``N x 1 x 32 x 32`` log-Mel spectrograms.

    Raises
    ------
    ImportError
        torchaudio is not installed (the ``audio`` extra).

    """
    try:
        import torchaudio
    except ImportError:
        raise ImportError(
            "Speech Commands needs torchaudio: pip install 'fedlean[audio]' (or pip install torchaudio)."
        ) from None
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=_N_FFT, win_length=_WIN, hop_length=_HOP, n_mels=_N_MELS
    )
    # Centred frames: 1 + 16000 // 512 = 32 of them.
    out = torch.empty((waves.shape[0], 1, _N_MELS, SAMPLE_RATE // _HOP + 1), dtype=torch.float32)
    for start in range(0, waves.shape[0], 2048):  # bounded temporary memory
        out[start : start + 2048, 0] = torch.log(mel(waves[start : start + 2048]) + 1e-6)
    return out


def load_speech_commands(root: str, num_classes: int) -> tuple[Any, ...]:
    """Load the train and test splits as standardised log-Mel images.

    Parameters
    ----------
    root : str
        The extracted dataset directory (see the module docstring).
    num_classes : int
        35 (all keywords) or 12 (10 keywords, silence, unknown).

    Returns
    -------
    tuple
        ``x_train, y_train, x_test, y_test, speakers``: float32 ``N x 1 x 32 x
        32`` tensors standardised with the training split's mean and std,
        int64 labels, and the speaker id of every training clip.

    """
    classes = speech_commands_classes(num_classes)
    excluded = {split: _read_list(root, name) for split, name in zip(("valid", "test"), _LISTS, strict=True)}
    train_files: list[str] = []
    for word in SPEECH_COMMANDS_V2_WORDS:
        folder = os.path.join(root, word)
        if os.path.isdir(folder):
            train_files += [
                f"{word}/{f}"
                for f in sorted(os.listdir(folder))
                if f.endswith(".wav")
                and f"{word}/{f}" not in excluded["valid"]
                and f"{word}/{f}" not in excluded["test"]
            ]
    test_files = sorted(excluded["test"])
    if not train_files:
        raise ValueError(f"No training clips found under {root!r}.")

    parts: list[Any] = []
    speakers: np.ndarray | None = None
    for split, files in (("train", train_files), ("test", test_files)):
        waves = _read_clips([os.path.join(root, f) for f in files])
        labels = np.asarray([_label(f.split("/")[0], classes) for f in files], dtype=np.int64)
        split_speakers = np.asarray([Path(f).name.split("_nohash_")[0] for f in files], dtype=object)
        if num_classes == 12:
            seed = 0 if split == "train" else 1
            silence = _silence_clips(root, int(np.ceil(SILENCE_FRACTION * len(files))), seed)
            waves = torch.cat([waves, silence])
            labels = np.concatenate([labels, np.full(len(silence), classes.index("_silence_"))])
            rng = np.random.default_rng(seed)
            split_speakers = np.concatenate([split_speakers, rng.choice(split_speakers, len(silence))])
        parts += [log_mel(waves), labels]
        if split == "train":
            speakers = split_speakers
    x_tr, y_tr, x_te, y_te = parts
    mean, std = float(x_tr.mean()), float(x_tr.std())
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te, speakers


def _label(word: str, classes: Sequence[str]) -> int:
    if word in classes:
        return classes.index(word)
    return classes.index("_unknown_")  # 12-class task only: other keywords


def _read_list(root: str, name: str) -> set[str]:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        if name == "testing_list.txt":
            raise FileNotFoundError(f"Speech Commands copy at {root!r} lacks {name}.")
        return set()
    with open(path, encoding="utf-8") as fh:
        return {line.strip() for line in fh if line.strip()}


def _read_wav(path: str) -> np.ndarray:
    """One clip as float32 in [-1, 1], zero-padded or cropped to one second."""
    with wave.open(path, "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(
                f"{path!r}: {w.getframerate()} Hz, {w.getnchannels()} channel(s), "
                f"{8 * w.getsampwidth()}-bit; Speech Commands clips are 16 kHz mono 16-bit."
            )
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    out = np.zeros(SAMPLE_RATE, dtype=np.float32)
    clip = samples[:SAMPLE_RATE].astype(np.float32) / 32768.0
    out[: len(clip)] = clip
    return out


def _read_clips(paths: Sequence[str]) -> torch.Tensor:
    if not paths:
        return torch.zeros((0, SAMPLE_RATE))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return torch.from_numpy(np.stack(list(pool.map(_read_wav, paths))))


def _silence_clips(root: str, count: int, seed: int) -> torch.Tensor:
    """``count`` 1-s background-noise windows at seeded offsets and volumes."""
    folder = os.path.join(root, _NOISE_DIR)
    names = sorted(f for f in os.listdir(folder) if f.endswith(".wav")) if os.path.isdir(folder) else []
    if not names:
        raise FileNotFoundError(f"The 12-class task needs {_NOISE_DIR}/*.wav under {root!r}.")
    noises = []
    for name in names:
        with wave.open(os.path.join(folder, name), "rb") as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        if len(raw) >= SAMPLE_RATE:
            noises.append(raw)
    if not noises:
        raise ValueError(f"Every {_NOISE_DIR} recording under {root!r} is shorter than one second.")
    rng = np.random.default_rng(seed)
    out = np.empty((count, SAMPLE_RATE), dtype=np.float32)
    for i in range(count):
        noise = noises[rng.integers(len(noises))]
        start = rng.integers(len(noise) - SAMPLE_RATE + 1)
        out[i] = noise[start : start + SAMPLE_RATE] * rng.uniform(0.0, 1.0)
    return torch.from_numpy(out)
