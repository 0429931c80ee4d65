"""Saved backbones (runs/<name>/backbone): written by save_backbone, accepted by build_backbone."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.backbones import BackboneConfig, build_backbone
from transferkit.backbones.saved import META_FILE, WEIGHTS_FILE, is_saved_backbone, save_backbone
from transferkit.errors import UserError


@pytest.mark.parametrize("name", ["vit-micro", "gpt2-tiny", "dinov2-tiny"])
def test_saved_backbone_round_trip(tmp_path, name):
    torch.manual_seed(0)
    original = build_backbone(name, image_size=32).eval()
    out = save_backbone(
        original, BackboneConfig(name=name), tmp_path / "bb", image_size=32, source={"method": "test"}
    )
    assert is_saved_backbone(out) and (out / WEIGHTS_FILE).is_file()
    meta = json.loads((out / META_FILE).read_text())
    assert (
        meta["backbone"]["name"] == name and meta["image_size"] == 32 and meta["source"]["method"] == "test"
    )
    loaded = build_backbone(str(out), image_size=32).eval()
    assert loaded.pretrained and loaded.name == str(out) and loaded.source == str(out)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), original(x))
    # a different input size still works (the architecture is built at the saved size)
    bigger = build_backbone(str(out), image_size=64).eval()
    assert bigger.input_size == 64 and bigger(torch.rand(1, 3, 64, 64)).shape == (1, original.embed_dim)
    # the random-init twin has the same architecture and other weights
    twin = build_backbone(f"{out}:random", image_size=32).eval()
    assert not twin.pretrained
    assert not torch.allclose(twin(x), original(x))


def test_broken_saved_backbone_is_a_clear_error(tmp_path):
    out = save_backbone(
        build_backbone("vit-micro", image_size=32),
        BackboneConfig(name="vit-micro"),
        tmp_path / "bb",
        image_size=32,
    )
    (out / WEIGHTS_FILE).unlink()
    with pytest.raises(UserError, match="has no model.safetensors"):
        build_backbone(str(out), image_size=32)
    meta = json.loads((out / META_FILE).read_text())
    meta["backbone"]["name"] = "gpt2-tiny"  # weights of another architecture
    save_backbone(
        build_backbone("vit-micro", image_size=32), BackboneConfig(name="vit-micro"), out, image_size=32
    )
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="do not fit the architecture"):
        build_backbone(str(out), image_size=32)
