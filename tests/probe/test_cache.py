"""Feature cache: hits, misses, invalidation, views and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.backbones import build_backbone, resolve_backbone
from transferkit.data import ImageClassificationDataModule
from transferkit.errors import UserError
from transferkit.probe.cache import get_features, weights_digest


def dm_for(root: Path, **kw) -> ImageClassificationDataModule:
    return ImageClassificationDataModule(
        source="imagefolder", path=str(root), image_size=32, batch_size=16, **kw
    )


def count_forward(bb, monkeypatch) -> list[int]:
    """Counts the images the backbone's forward passes see."""
    seen = [0]
    for name in ("forward_features", "forward_intermediates"):
        original = getattr(bb, name)

        def wrapped(images, *args, _original=original, **kwargs):
            seen[0] += images.shape[0]
            return _original(images, *args, **kwargs)

        monkeypatch.setattr(bb, name, wrapped)
    return seen


def test_miss_then_hit_without_running_the_backbone(digits_folder, tmp_path, monkeypatch):
    dm = dm_for(digits_folder)
    bb = resolve_backbone("vit-micro", 32)
    seen = count_forward(bb, monkeypatch)
    exact = {"precision": "float32", "storage": "float32"}
    first = get_features(bb, dm, "train", cache_dir=tmp_path / "c", progress=False, **exact)
    assert not first.metadata["cache_hit"] and seen[0] == 120
    assert first.features.shape == (120, bb.embed_dim) and first.features.dtype == np.float32
    np.testing.assert_array_equal(first.labels, dm.dataset("train").targets)
    assert first.metadata["throughput_img_s"] > 0 and first.metadata["num_params"] == bb.num_params()

    second = get_features(bb, dm, "train", cache_dir=tmp_path / "c", progress=False, **exact)
    assert second.metadata["cache_hit"] and seen[0] == 120  # the backbone did not run again
    assert isinstance(second.features, np.memmap)
    np.testing.assert_array_equal(second.features, first.features)
    assert second.path == first.path

    # the cached numbers are the backbone's own pooled output
    images = torch.stack([dm.dataset("train")[i][0] for i in range(4)])
    with torch.inference_mode():
        expected = bb.eval()(images).numpy()
    np.testing.assert_allclose(second.features[:4], expected, rtol=1e-4, atol=1e-5)
    # nothing half-written is left behind
    assert not [p for p in (tmp_path / "c").rglob("*") if p.name.endswith(".tmp")]


def test_invalidation_backbone_weights_data_transform(digits_folder, tmp_path):
    cache = tmp_path / "c"

    def key(bb, dm):
        return get_features(bb, dm, "val", cache_dir=cache, progress=False)

    dm = dm_for(digits_folder)
    bb = resolve_backbone("vit-micro", 32)
    base = key(bb, dm)
    assert key(bb, dm).metadata["cache_hit"]

    # another backbone
    other = key(resolve_backbone("gpt2-tiny", 32), dm)
    assert not other.metadata["cache_hit"] and other.metadata["key"] != base.metadata["key"]

    # the same name rebuilt: the random init is seeded, so the weights (and the cache entry) are the same
    rebuilt = resolve_backbone("vit-micro", 32)
    assert weights_digest(rebuilt) == weights_digest(bb)
    assert key(rebuilt, dm).metadata["cache_hit"]

    # changed weights
    with torch.no_grad():
        next(bb.parameters()).add_(0.5)
    changed = key(bb, dm)
    assert (
        not changed.metadata["cache_hit"]
        and changed.metadata["weights_digest"] != base.metadata["weights_digest"]
    )
    assert not np.allclose(changed.features, base.features)

    # changed data: one more image in val
    extra = digits_folder / "val" / "3" / "extra.png"
    extra.write_bytes(
        (digits_folder / "train" / "3" / os.listdir(digits_folder / "train" / "3")[0]).read_bytes()
    )
    more = key(rebuilt, dm_for(digits_folder))
    assert not more.metadata["cache_hit"] and more.num_samples == base.num_samples + 1
    extra.unlink()
    assert key(rebuilt, dm_for(digits_folder)).metadata["cache_hit"]  # back to the original data: a hit

    # changed eval transform (crop) and image size
    assert not key(rebuilt, dm_for(digits_folder, crop_pct=0.875)).metadata["cache_hit"]
    dm48 = ImageClassificationDataModule(source="imagefolder", path=str(digits_folder), image_size=48)
    assert not key(resolve_backbone("vit-micro", 48), dm48).metadata["cache_hit"]


def test_one_pass_serves_poolings_and_layers(digits_folder, tmp_path, monkeypatch):
    dm = dm_for(digits_folder)
    bb = resolve_backbone("vit-micro", 32)
    seen = count_forward(bb, monkeypatch)
    fs = get_features(
        bb, dm, "test", layers=3, pooling="cls", extra_poolings=["mean"], cache_dir=tmp_path, progress=False,
        precision="float32", storage="float32",
    )  # fmt: skip
    n = fs.num_samples
    assert fs.features.shape == (n, 3, bb.embed_dim) and seen[0] == n
    # other poolings / fewer blocks come from the same entry
    for pooling, layers, shape in [
        ("mean", 1, (n, 1, 64)),
        ("cls+mean", 2, (n, 2, 128)),
        ("mean", 3, (n, 3, 64)),
    ]:
        other = get_features(
            bb, dm, "test", layers=layers, pooling=pooling, cache_dir=tmp_path, progress=False,
            precision="float32", storage="float32",
        )  # fmt: skip
        assert other.metadata["cache_hit"] and other.features.shape == shape
    assert seen[0] == n
    view = fs.view("cls+mean", 2).features
    np.testing.assert_array_equal(view[:, :, :64], fs.features[:, 1:, :])
    # the stored blocks are the backbone's intermediates
    images = torch.stack([dm.dataset("test")[i][0] for i in range(3)])
    with torch.inference_mode():
        blocks = bb.forward_intermediates(images, 3)
    np.testing.assert_allclose(fs.features[:3, 0], blocks[0][:, 0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        fs.view("mean", 1).features[:3, 0], blocks[-1][:, 1:].mean(1).numpy(), rtol=1e-4, atol=1e-5
    )
    # a pooling that was not stored needs a new pass
    assert not get_features(
        bb, dm, "test", layers=3, pooling="last", cache_dir=tmp_path, progress=False, precision="float32",
        storage="float32",
    ).metadata["cache_hit"]  # fmt: skip
    with pytest.raises(UserError, match="not stored"):
        fs.view("last", 1)


def test_failed_extraction_leaves_no_entry(digits_folder, tmp_path, monkeypatch):
    dm = dm_for(digits_folder)
    bb = build_backbone("vit-micro", image_size=32)
    calls = [0]
    original = bb.forward_features

    def flaky(images):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("out of memory")
        return original(images)

    monkeypatch.setattr(bb, "forward_features", flaky)
    cache = tmp_path / "c"
    with pytest.raises(RuntimeError):
        get_features(bb, dm, "train", cache_dir=cache, progress=False)
    # neither a partial entry nor a temp file (the key's lock file stays, empty)
    assert not [p for p in cache.rglob("*") if p.is_file() and p.name != ".lock"]
    fs = get_features(bb, dm, "train", cache_dir=cache, progress=False)
    assert not fs.metadata["cache_hit"] and fs.num_samples == 120


def test_unreadable_images_are_dropped_with_their_labels(digits_folder, tmp_path):
    (digits_folder / "val" / "5" / "broken.png").write_bytes(b"not a png")
    dm = dm_for(digits_folder, on_corrupt="skip")
    fs = get_features("vit-micro", dm, "val", cache_dir=tmp_path, progress=False)
    assert fs.num_samples == 60 and len(fs.labels) == 60
    assert np.bincount(fs.labels).tolist() == [6] * 10
    assert get_features("vit-micro", dm, "val", cache_dir=tmp_path, progress=False).metadata["cache_hit"]


def test_bad_requests_are_user_errors(digits_folder, tmp_path):
    dm = dm_for(digits_folder)
    with pytest.raises(UserError, match="pooling 'cls'"):
        get_features("gpt2-tiny", dm, "val", pooling="cls", cache_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="layers must be between"):
        get_features("gpt2-tiny", dm, "val", layers=7, cache_dir=tmp_path, progress=False)


def test_block_entry_serves_the_final_output_when_the_last_block_is_final(
    digits_folder, tmp_path, monkeypatch
):
    dm = dm_for(digits_folder)
    bb = resolve_backbone("vit-micro", 32)
    fresh = get_features(bb, dm, "val", cache=False, progress=False).features  # (N, D), no cache
    blocks = get_features(
        bb, dm, "val", layers=2, extra_poolings=["mean"], cache_dir=tmp_path, progress=False
    )
    seen = count_forward(bb, monkeypatch)
    final = get_features(bb, dm, "val", cache_dir=tmp_path, progress=False)
    # two images checked that the last block is the final output; the split itself did not run again
    assert final.metadata["cache_hit"] and final.path == blocks.path and seen[0] == 2 * 2
    np.testing.assert_allclose(final.features, fresh, rtol=1e-4, atol=1e-5)
    assert not [p for p in tmp_path.rglob("final-*")]


def test_block_entry_is_not_used_when_the_final_output_differs(digits_folder, tmp_path, monkeypatch):
    dm = dm_for(digits_folder)
    bb = resolve_backbone("vit-micro", 32)
    get_features(bb, dm, "val", layers=2, cache_dir=tmp_path, progress=False)
    original = bb.forward_features
    monkeypatch.setattr(bb, "forward_features", lambda images: original(images) * 2.0)  # e.g. a pooler on top
    final = get_features(bb, dm, "val", cache_dir=tmp_path, progress=False)
    assert not final.metadata["cache_hit"] and final.path.name.startswith("final-")


# two processes ask for the same entry at once: one extracts, the other waits on the key's lock and reads it
CONCURRENT = """
import json, sys
from transferkit.data import ImageClassificationDataModule
from transferkit.probe.cache import get_features
dm = ImageClassificationDataModule(source="imagefolder", path=sys.argv[1], image_size=32)
fs = get_features("vit-micro", dm, "train", cache_dir=sys.argv[2], progress=False)
print(json.dumps({"hit": fs.metadata["cache_hit"], "sum": float(fs.features.sum())}))
"""


def test_two_concurrent_extractions_of_one_entry_both_succeed_and_one_reuses(digits_folder, tmp_path):
    import json
    import subprocess
    import sys

    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT, str(digits_folder), str(cache)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        for _ in range(2)
    ]  # fmt: skip
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["hit"] for o in outs) == [False, True]  # extracted once, read once
    assert outs[0]["sum"] == outs[1]["sum"]
    entries = [d for d in cache.rglob("*") if d.is_dir() and (d / "meta.json").is_file()]
    assert len(entries) == 1


def test_an_orphan_temp_folder_of_a_killed_extraction_is_removed(digits_folder, tmp_path):
    dm = dm_for(digits_folder)
    bb = build_backbone("vit-micro", image_size=32)
    cache = tmp_path / "c"
    get_features(bb, dm, "train", cache_dir=cache, progress=False)
    key_dir = next(d for d in cache.rglob("*") if d.is_dir() and (d / ".lock").exists())
    orphan = key_dir / ".L1-cls.abc123.tmp"
    orphan.mkdir()
    (orphan / "summaries.npy").write_bytes(b"partial")
    get_features(bb, dm, "train", cache_dir=cache, progress=False, refresh=True)
    assert not orphan.exists()


def test_float16_and_bfloat16_storage_round_trip_within_their_precision_and_are_their_own_entries(
    digits_folder, tmp_path
):
    dm = dm_for(digits_folder)
    bb = resolve_backbone("vit-micro", 32)
    kw = dict(
        cache_dir=tmp_path,
        progress=False,
        precision="float32",
        layers=2,
        pooling="cls",
        extra_poolings=["mean"],
    )
    full = get_features(bb, dm, "val", storage="float32", **kw)
    half = get_features(bb, dm, "val", storage="float16", **kw)
    assert not half.metadata["cache_hit"] and half.metadata["key"] != full.metadata["key"]  # a miss
    assert half.metadata["storage"] == "float16" and half.features.dtype == np.float32
    np.testing.assert_allclose(half.features, full.features, rtol=1e-3, atol=1e-3)  # float16: 11 bits
    brain = get_features(bb, dm, "val", storage="bfloat16", **kw)
    np.testing.assert_allclose(brain.features, full.features, rtol=8e-3, atol=8e-3)  # bfloat16: 8 bits
    again = get_features(bb, dm, "val", storage="float16", **kw)
    assert again.metadata["cache_hit"]
    np.testing.assert_array_equal(again.features, half.features)
    # rows read without materialising agree with the whole view, in every format
    for fs in (full, half, brain):
        view = fs.view("cls+mean", 2)
        idx = np.array([5, 0, 17, 3])
        np.testing.assert_array_equal(view.take(idx), view.features[idx])
        assert np.concatenate(list(view.chunks(7))).shape == view.shape
    on_disk = np.load(next(p for p in half.path.rglob("summaries.npy")), mmap_mode="r")
    assert on_disk.dtype == np.float16  # half the bytes of float32


def test_a_value_beyond_float16_is_stored_in_float32_with_a_warning(
    digits_folder, tmp_path, caplog, monkeypatch
):
    dm = dm_for(digits_folder)
    bb = resolve_backbone("vit-micro", 32)
    original = bb.forward_features
    monkeypatch.setattr(bb, "forward_features", lambda x: original(x) * 1e5)  # massive activations
    fs = get_features(bb, dm, "val", cache_dir=tmp_path, progress=False, precision="float32")
    assert fs.metadata["storage"] == "float32" and np.isfinite(fs.features).all()
    assert float(np.abs(fs.features).max()) > 65504 and "beyond float16's range" in caplog.text


def test_precision_auto_is_bfloat16_only_where_the_hardware_runs_it():
    from transferkit.probe.cache import cpu_has_fast_bf16, resolve_precision

    assert resolve_precision("auto", "cpu") == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    assert resolve_precision("float16", "cpu") == "float16"
    with pytest.raises(UserError, match="unknown precision"):
        resolve_precision("fp8", "cpu")
