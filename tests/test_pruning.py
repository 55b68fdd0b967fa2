"""Pure pruning helpers: schedule, exact-count global pruning, majority vote (hand-made inputs)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fl_strategies import codec
from fl_strategies.codec import (
    VALUES_MIXED_PLANES,
    VALUES_RAW,
    VALUES_XOR_MIXED_PLANES,
    VALUES_XOR_ZLIB_PLANES,
    VALUES_ZLIB_PLANES,
    CodecError,
    decode_known_values,
    encode_known_values,
)
from fl_strategies.pruning import (
    apply_mask,
    flat_mask,
    full_mask,
    gather_known,
    is_prunable,
    known_count,
    known_names,
    magnitude_prune,
    majority_vote,
    mask_counts,
    mask_from_zeros,
    prunable_names,
    prune_by_score,
    random_prune,
    scatter_known,
    sparsity_at,
    target_count,
    unflat_mask,
)


# ----------------------------------------------------------------- schedule
def test_schedule_values_by_hand():
    # s_t = 0.9 - 0.9 * (1 - (t - 1) / 9) ** 3 for T = 10, t_0 = 1, s_0 = 0.
    kw = dict(s_0=0.0, s_f=0.9, t_0=1, T=10, frequency=1, exponent=3)
    assert sparsity_at(1, **kw) == 0.0
    assert sparsity_at(4, **kw) == pytest.approx(0.9 - 0.9 * 8 / 27)  # (2/3)^3
    assert sparsity_at(7, **kw) == pytest.approx(0.9 - 0.9 / 27)  # (1/3)^3
    assert sparsity_at(10, **kw) == 0.9
    assert sparsity_at(12, **kw) == 0.9


def test_schedule_before_t0_is_s0():
    kw = dict(s_0=0.2, s_f=0.8, t_0=5, T=15, frequency=1, exponent=2)
    assert sparsity_at(0, **kw) == 0.2
    assert sparsity_at(4, **kw) == 0.2
    assert sparsity_at(5, **kw) == pytest.approx(0.2)  # (1 - 0)^2: still s_0
    # t = 10: 0.8 + (0.2 - 0.8) * (1 - 5/10)^2 = 0.8 - 0.6 * 0.25
    assert sparsity_at(10, **kw) == pytest.approx(0.65)


def test_schedule_frequency_snaps_down():
    kw = dict(s_0=0.0, s_f=0.9, t_0=1, T=10, frequency=3, exponent=3)
    assert sparsity_at(2, **kw) == 0.0  # snapped to 0 < t_0
    # t = 3, 4, 5 all use t' = 3: 0.9 - 0.9 * (1 - 2/9)^3 = 0.9 - 0.9 * 343/729
    expected = 0.9 - 0.9 * 343 / 729
    for t in (3, 4, 5):
        assert sparsity_at(t, **kw) == pytest.approx(expected)
    assert sparsity_at(6, **kw) == pytest.approx(0.9 - 0.9 * (4 / 9) ** 3)
    assert sparsity_at(9, **kw) == pytest.approx(0.9 - 0.9 * (1 / 9) ** 3)
    assert sparsity_at(10, **kw) == 0.9  # T is not a multiple of f: still s_f at T


def test_schedule_is_monotone_and_ends_at_sf():
    for f in (1, 2, 5):
        for n in (1, 3, 6):
            values = [sparsity_at(t, 0.1, 0.95, 3, 40, f, n) for t in range(0, 45)]
            assert all(b >= a for a, b in zip(values, values[1:], strict=False))
            assert values[40] == 0.95


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="frequency"):
        sparsity_at(1, frequency=0)
    with pytest.raises(ValueError, match="t_0"):
        sparsity_at(1, t_0=5, T=3)
    with pytest.raises(ValueError, match="exponent"):
        sparsity_at(1, exponent=0)


# ------------------------------------------------------------- prunability
def test_prunable_names_default_and_all():
    arrays = {
        "conv.weight": np.ones((4, 3, 3, 3), np.float32),
        "conv.bias": np.ones(4, np.float32),
        "bn.weight": np.ones(4, np.float32),
        "bn.running_mean": np.zeros(4, np.float32),
        "bn.running_var": np.ones(4, np.float32),
        "bn.num_batches_tracked": np.array(3),
        "fc.weight": np.ones((2, 4), np.float32),
        "fc.bias": np.ones(2, np.float32),
    }
    assert prunable_names(arrays) == ["conv.weight", "fc.weight"]
    assert prunable_names(arrays, "all") == ["conv.weight", "conv.bias", "bn.weight", "fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="scope"):
        is_prunable("x", arrays["fc.weight"], "layers")


# ------------------------------------------------------------- pruning
def _model(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a.weight": rng.normal(size=(7, 11)).astype(np.float32),
        "b.weight": rng.normal(size=(13, 3, 2)).astype(np.float32),
        "b.bias": rng.normal(size=13).astype(np.float32),
    }


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.999, 1.0])
def test_magnitude_pruning_hits_exact_count_and_cuts_smallest(sparsity):
    arrays = _model()
    keep = full_mask(arrays, ["a.weight", "b.weight"])
    total = 77 + 78
    new = magnitude_prune(arrays, keep, sparsity)
    pruned, size = mask_counts(new)
    assert size == total and pruned == target_count(total, sparsity) == round(sparsity * total)
    cut = np.concatenate([np.abs(arrays[n])[~new[n]] for n in new])
    kept = np.concatenate([np.abs(arrays[n])[new[n]] for n in new])
    if cut.size and kept.size:
        assert cut.max() <= kept.min()
    assert "b.bias" not in new  # biases are never touched by default


def test_pruning_is_global_not_per_layer():
    arrays = {
        "small.weight": np.full((2, 5), 0.01, np.float32),
        "large.weight": np.arange(1, 11, dtype=np.float32).reshape(2, 5),
    }
    new = magnitude_prune(arrays, full_mask(arrays, list(arrays)), 0.5)
    assert not new["small.weight"].any()  # the whole small layer goes first
    assert new["large.weight"].all()


def test_magnitude_pruning_with_ties_still_exact():
    arrays = {"w.weight": np.ones((10, 10), np.float32)}
    new = magnitude_prune(arrays, full_mask(arrays, ["w.weight"]), 0.33)
    assert mask_counts(new) == (33, 100)


def test_no_weight_regrows_even_if_it_becomes_large():
    arrays = _model(1)
    keep = magnitude_prune(arrays, full_mask(arrays, ["a.weight", "b.weight"]), 0.5)
    # The pruned weights come back huge (e.g. a misbehaving client): they stay pruned.
    revived = {n: np.where(keep[n], arrays[n], 100.0).astype(np.float32) for n in keep}
    for sparsity in (0.5, 0.6, 0.3):  # 0.3 < current: sparsity never decreases
        new = magnitude_prune(revived, keep, sparsity)
        for name in keep:
            assert not (new[name] & ~keep[name]).any()
        assert mask_counts(new)[0] == max(target_count(155, sparsity), mask_counts(keep)[0])
    rng = np.random.default_rng(0)
    new = random_prune(keep, 0.8, rng)
    assert all(not (new[n] & ~keep[n]).any() for n in keep)
    assert mask_counts(new)[0] == target_count(155, 0.8)


def _argpartition_prune(scores, keep, sparsity):
    """prune_by_score as it was: one argpartition over all positions (pruned = -inf)."""
    names = list(keep)
    old = np.concatenate([keep[n].reshape(-1) for n in names])
    flat = np.concatenate([np.asarray(scores[n], np.float64).reshape(-1) for n in names])
    flat = np.where(old, np.nan_to_num(flat, nan=-np.inf), -np.inf)
    count = max(target_count(old.size, sparsity), int(old.size - old.sum()))
    new = np.ones(old.size, dtype=bool)
    if count >= old.size:
        new[:] = False
    elif count > 0:
        new[np.argpartition(flat, count - 1)[:count]] = False
    sizes = np.cumsum([keep[n].size for n in names])[:-1]
    parts = np.split(new, sizes)
    return {n: p.reshape(keep[n].shape) for n, p in zip(names, parts, strict=True)}


@pytest.mark.parametrize("kind", ["distinct", "ties", "nan", "neg-inf"])
def test_prune_by_score_threshold_path_matches_argpartition(kind):
    """The alive-only threshold picks the same positions as the full argpartition, ties included."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        shapes = [(int(rng.integers(1, 30)), int(rng.integers(1, 20))) for _ in range(3)]
        density = rng.choice([1.0, 0.7, 0.3, 0.05])
        keep = {f"w{i}": rng.random(sh) < density for i, sh in enumerate(shapes)}
        scores = {}
        for name, m in keep.items():
            base = rng.standard_normal(m.shape)
            if kind == "ties":
                base = rng.integers(0, 3, m.shape).astype(np.float64)
            elif kind == "nan":
                base[rng.random(m.shape) < 0.2] = np.nan
            elif kind == "neg-inf":
                base[rng.random(m.shape) < 0.2] = -np.inf
            scores[name] = base.astype(np.float32)
        sparsity = float(rng.choice([0.0, 0.2, 0.5, 0.9, 0.99, 1.0]))
        got, expected = prune_by_score(scores, keep, sparsity), _argpartition_prune(scores, keep, sparsity)
        for name in keep:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"trial {trial}")


def test_prune_by_score_prunes_lowest_scores():
    keep = {"w": np.ones((2, 3), bool)}
    scores = {"w": np.array([[5.0, -1.0, 3.0], [0.5, 9.0, 2.0]])}
    new = prune_by_score(scores, keep, 0.5)
    np.testing.assert_array_equal(new["w"], [[True, False, True], [False, True, False]])


def test_mask_roundtrip_through_zeros():
    arrays = _model(2)
    keep = magnitude_prune(arrays, full_mask(arrays, ["a.weight", "b.weight"]), 0.6)
    masked = apply_mask(arrays, keep)
    assert masked["a.weight"].dtype == np.float32
    derived = mask_from_zeros(masked, ["a.weight", "b.weight"])
    for name in keep:
        np.testing.assert_array_equal(derived[name], keep[name])
    np.testing.assert_array_equal(masked["b.bias"], arrays["b.bias"])


# --------------------------------------------------------- majority vote
def test_majority_vote_three_clients_odd_n():
    # Position: 0 kept by 3, 1 kept by 2 (>= 1.5: kept), 2 kept by 1 (pruned), 3 by none.
    masks = [
        {"w": np.array([1, 1, 1, 0], bool)},
        {"w": np.array([1, 1, 0, 0], bool)},
        {"w": np.array([1, 0, 0, 0], bool)},
    ]
    values = [
        {"w": np.array([1.0, 2.0, 3.0, 0.0], np.float32), "b": np.array([1.0], np.float32)},
        {"w": np.array([4.0, 5.0, 0.0, 0.0], np.float32), "b": np.array([2.0], np.float32)},
        {"w": np.array([7.0, 0.0, 0.0, 0.0], np.float32), "b": np.array([3.0], np.float32)},
    ]
    weights = [1, 1, 2]
    merged, keep = majority_vote(values, masks, weights, "all")
    np.testing.assert_array_equal(keep["w"], [True, True, False, False])
    # all: divide by the total weight 4 -> [(1+4+14)/4, (2+5)/4, 0, 0]
    np.testing.assert_allclose(merged["w"], [19 / 4, 7 / 4, 0, 0])
    np.testing.assert_allclose(merged["b"], [(1 + 2 + 6) / 4])
    merged, _ = majority_vote(values, masks, weights, "nnz")
    # nnz: divide by the weight of the clients that kept it -> [19/4, 7/2, 0, 0]
    np.testing.assert_allclose(merged["w"], [19 / 4, 7 / 2, 0, 0])
    assert merged["w"].dtype == np.float32


def test_majority_vote_four_clients_even_n_tie_is_kept():
    masks = [
        {"w": np.array([1, 1, 1, 1], bool)},
        {"w": np.array([1, 1, 0, 0], bool)},
        {"w": np.array([1, 0, 1, 0], bool)},
        {"w": np.array([1, 0, 0, 0], bool)},
    ]
    values = [
        {"w": np.array([1.0, 1.0, 1.0, 1.0])},
        {"w": np.array([2.0, 2.0, 9.0, 9.0])},
        {"w": np.array([3.0, 9.0, 3.0, 9.0])},
        {"w": np.array([4.0, 9.0, 9.0, 9.0])},
    ]
    weights = [1, 1, 1, 1]
    merged, keep = majority_vote(values, masks, weights, "all")
    # votes 4, 2, 2, 1: 2 * votes >= 4 keeps the ties. Values a client pruned count as 0
    # even if it sent garbage there.
    np.testing.assert_array_equal(keep["w"], [True, True, True, False])
    np.testing.assert_allclose(merged["w"], [10 / 4, 3 / 4, 4 / 4, 0])
    merged, _ = majority_vote(values, masks, weights, "nnz")
    np.testing.assert_allclose(merged["w"], [10 / 4, 3 / 2, 4 / 2, 0])


def test_majority_vote_reference_defect_is_not_reproduced():
    # votes >= N // 2 would keep a position that 1 of 3 clients keeps.
    masks = [{"w": np.array([True])}, {"w": np.array([False])}, {"w": np.array([False])}]
    values = [{"w": np.array([1.0])}, {"w": np.array([0.0])}, {"w": np.array([0.0])}]
    _, keep = majority_vote(values, masks, [1, 1, 1])
    assert not keep["w"][0]
    with pytest.raises(ValueError, match="average"):
        majority_vote(values, masks, [1, 1, 1], "mean")


# ------------------------------------------------------- known-mask values
def _weights(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.05).astype(np.float32)


def test_known_values_roundtrip_bit_for_bit_in_every_form():
    values = _weights(5000)
    trained = values + _weights(5000, 1) * 0.05
    raw = encode_known_values(values, compress=False)
    planes = encode_known_values(values)
    xor = encode_known_values(trained, reference=values)
    # The low mantissa bytes of random weights are noise: stored raw, the rest deflated.
    assert (raw[0], planes[0], xor[0]) == (VALUES_RAW, VALUES_MIXED_PLANES, VALUES_XOR_MIXED_PLANES)
    assert raw.size == 1 + 4 * 5000
    # Sign/exponent bytes of similar values repeat; close values share their leading bits.
    assert planes.size < 0.95 * raw.size and xor.size < planes.size
    # Values with structured low bytes (steps of 1/8) deflate in every plane.
    steps = (np.random.default_rng(5).integers(-64, 64, 5000) / 8).astype(np.float32)
    moved = steps.copy()
    moved[::50] += 0.125
    zplanes, zxor = encode_known_values(steps), encode_known_values(moved, reference=steps)
    assert (zplanes[0], zxor[0]) == (VALUES_ZLIB_PLANES, VALUES_XOR_ZLIB_PLANES)
    cases = [(raw, values, None), (planes, values, None), (xor, trained, values)]
    for blob, expected, ref in [*cases, (zplanes, steps, None), (zxor, moved, steps)]:
        out = decode_known_values(blob, 5000, np.float32, ref)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
    # Incompressible tiny payloads stay raw; -0.0 and NaN bit patterns survive.
    odd = np.array([-0.0, np.nan, 1e-40], dtype=np.float32)
    assert encode_known_values(odd)[0] == VALUES_RAW
    np.testing.assert_array_equal(
        decode_known_values(encode_known_values(odd), 3).view(np.uint32), odd.view(np.uint32)
    )


def _all_value_forms(values: np.ndarray, reference: np.ndarray) -> dict[int, int]:
    """Blob size of every known-value form, each deflated in full (what the encoder may skip)."""
    words, ref = values.view("<u4"), reference.view("<u4")
    sizes = {VALUES_RAW: 1 + values.nbytes}
    for form, form_words in ((VALUES_ZLIB_PLANES, words), (VALUES_XOR_ZLIB_PLANES, words ^ ref)):
        mixed, payload = codec._planes_payload(form_words, 4, codec._plane_entropies(form_words, 4))
        sizes[codec._MIXED_FORM[form] if mixed else form] = 1 + len(payload)
    return sizes


@pytest.mark.parametrize("change", [0.0, 1e-4, 0.05, 1.0, "unrelated", "constant"])
def test_known_values_estimate_skips_only_forms_that_lose(change):
    """The entropy estimate deflates one form only where the other is larger in full."""
    reference = _weights(20_000)
    if change == "unrelated":
        values = np.random.default_rng(3).random(20_000).astype(np.float32)
    elif change == "constant":  # the plain planes win: the XOR is the reference's noise
        values = np.full(20_000, 0.5, np.float32)
    else:
        values = (reference + _weights(20_000, 2) * change).astype(np.float32)
    blob = encode_known_values(values, reference=reference)
    sizes = _all_value_forms(values, reference)
    assert blob.size == min(sizes.values())
    assert blob[0] == min(sizes, key=lambda f: (sizes[f], f))
    out = decode_known_values(blob, values.size, np.float32, reference)
    np.testing.assert_array_equal(out.view(np.uint32), values.view(np.uint32))


def test_known_values_rle_deflate_is_no_larger_than_level_6():
    """Z_RLE on byte planes: as small as zlib level 6 on weights and on their XOR (measured win)."""
    values = _weights(20_000)
    trained = (values + _weights(20_000, 1) * 0.01).astype(np.float32)
    for words in (values.view("<u4"), trained.view("<u4") ^ values.view("<u4")):
        planes = codec._byte_planes(words, 4)
        assert len(codec._deflate_rle(planes)) <= 1.01 * len(zlib.compress(planes, 6))
        assert zlib.decompress(codec._deflate_rle(planes)) == planes


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_known_values_decode_tiny_counts_writable(count):
    values = _weights(count)
    for blob in (encode_known_values(values), encode_known_values(values, compress=False)):
        out = decode_known_values(blob, count)
        np.testing.assert_array_equal(out.view(np.uint32), values.view(np.uint32))
        out[...] = 7.0  # a fresh, writable array, not a view of the message
        assert out.flags.owndata or out.base is not None and out.base.flags.writeable


def test_known_values_decoder_checks_the_count_it_knows_before_allocating():
    values = _weights(1000)
    with pytest.raises(CodecError, match="1000 values need 4000"):
        decode_known_values(encode_known_values(values[:-1], compress=False), 1000)
    # Structured values (steps of 1/8): the all-planes zlib stream.
    planes = encode_known_values((np.random.default_rng(5).integers(-64, 64, 1000) / 8).astype(np.float32))
    assert planes[0] == VALUES_ZLIB_PLANES
    with pytest.raises(CodecError, match="longer than the 3996 bytes"):
        decode_known_values(planes, 999)  # inflating stops at what 999 values may hold
    with pytest.raises(CodecError, match="inflates to 4000 bytes"):
        decode_known_values(planes, 1001)
    with pytest.raises(CodecError, match="need the reference"):
        decode_known_values(encode_known_values(values, reference=values * 1.001), 1000)
    with pytest.raises(CodecError, match="corrupt zlib"):
        decode_known_values(np.concatenate([planes[:1], planes[1:][::-1]]), 1000)
    with pytest.raises(CodecError, match="unknown known-mask value form 9"):
        decode_known_values(np.array([9, 0, 0, 0, 0], np.uint8), 1)


def test_known_layout_gathers_and_scatters_in_sorted_name_order():
    arrays = {
        "b.weight": np.arange(6, dtype=np.float32).reshape(2, 3) + 1,
        "a.bias": np.array([7.0, 8.0], np.float32),
        "steps": np.array(3, dtype=np.int64),
    }
    keep = {"b.weight": np.array([[True, False, True], [False, False, True]])}
    names = known_names(arrays)
    assert names == ["a.bias", "b.weight"]  # float32 only, sorted
    shapes = {n: arrays[n].shape for n in names}
    assert known_count(shapes, keep) == 2 + 3
    flat = gather_known(arrays, keep, names)
    np.testing.assert_array_equal(flat, [7, 8, 1, 3, 6])
    back = scatter_known(flat, shapes, keep)
    np.testing.assert_array_equal(back["b.weight"], [[1, 0, 3], [0, 0, 6]])
    np.testing.assert_array_equal(back["a.bias"], [7, 8])
    with pytest.raises(ValueError, match="4 known-mask values for 5 positions"):
        scatter_known(flat[:4], shapes, keep)
    two = {"x": np.ones((2, 2), bool), "w": np.zeros(3, bool)}
    np.testing.assert_array_equal(flat_mask(two), [0, 0, 0, 1, 1, 1, 1])  # w before x
    roundtrip = unflat_mask(flat_mask(two), two)
    assert list(roundtrip) == ["x", "w"] and all((roundtrip[k] == two[k]).all() for k in two)


def test_known_values_mixed_planes_store_noise_raw_and_decode_bounded():
    """Noise planes go raw (exactly their bytes), structured ones deflated; bad blobs fail cleanly."""
    values = _weights(20_000)
    blob = encode_known_values(values)
    assert blob[0] == VALUES_MIXED_PLANES
    words = values.view("<u4")
    entropies = codec._plane_entropies(words, 4)
    deflated = [e < codec.RAW_PLANE_BITS for e in entropies]
    assert blob[1] == sum(1 << j for j, d in enumerate(deflated) if d)
    assert 0 < sum(deflated) < 4  # the sign/exponent plane deflates, the lowest byte does not
    planes = np.frombuffer(codec._byte_planes(words, 4), np.uint8).reshape(4, -1)
    raw = planes[[not d for d in deflated]].reshape(-1)
    np.testing.assert_array_equal(blob[2 : 2 + raw.size], raw)
    np.testing.assert_array_equal(decode_known_values(blob, 20_000).view(np.uint32), words)
    # Flags naming a fifth plane, a cut raw part, trailing bytes, a stream inflating too far.
    bad_flags = blob.copy()
    bad_flags[1] |= 0x10
    bomb = np.frombuffer(codec._deflate_rle(bytes(4 * 20_000 + 64)), np.uint8)
    stream_only = np.concatenate([np.array([VALUES_MIXED_PLANES, 0xF], np.uint8), bomb])
    all_raw = np.concatenate([np.array([VALUES_MIXED_PLANES, 0], np.uint8), planes.reshape(-1)])
    for forged, message in (
        (bad_flags, "beyond"),
        (blob[: 2 + raw.size - 1], "raw bytes"),
        (np.concatenate([all_raw, np.zeros(1, np.uint8)]), "trailing"),
        (stream_only, "longer than the 80000 bytes"),
        (blob[:1], "flags byte"),
    ):
        with pytest.raises(CodecError, match=message):
            decode_known_values(forged, 20_000)
    np.testing.assert_array_equal(decode_known_values(all_raw, 20_000).view(np.uint32), words)
    with pytest.raises(CodecError, match="reference"):
        xor_form = np.array([VALUES_XOR_MIXED_PLANES], np.uint8)
        decode_known_values(np.concatenate([xor_form, all_raw[1:]]), 20_000)
