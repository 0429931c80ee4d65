import numpy as np
import pytest
import torch

from transferkit.data import ImageClassificationDataModule
from transferkit.errors import UserError
from transferkit.select.dataset_embed import class_balanced_indices, embed_dataset, pad_token_sets


def test_class_balanced_indices():
    y = np.array([0] * 50 + [1] * 5 + [2] * 20)
    idx = class_balanced_indices(y, 18, seed=0)
    counts = np.bincount(y[idx], minlength=3)
    assert len(idx) == 18 and counts.tolist() == [7, 5, 6] or counts.tolist() == [6, 5, 7]
    assert np.all(np.diff(idx) > 0)  # sorted, no duplicates
    np.testing.assert_array_equal(idx, class_balanced_indices(y, 18, seed=0))
    assert not np.array_equal(idx, class_balanced_indices(y, 18, seed=1))
    assert len(class_balanced_indices(y, 1000)) == len(y)
    with pytest.raises(UserError):
        class_balanced_indices(y, 0)


def test_pad_token_sets():
    tokens, mask = pad_token_sets([np.ones((3, 4)), np.ones((1, 4)) * 2])
    assert tokens.shape == (2, 3, 4) and mask.tolist() == [[False] * 3, [False, True, True]]
    assert torch.all(tokens[1, 1:] == 0)
    with pytest.raises(UserError, match="one D"):
        pad_token_sets([np.ones((3, 4)), np.ones((2, 5))])


def test_embed_dataset_uses_a_balanced_cached_sample(tmp_path):
    dm = ImageClassificationDataModule(source="digits", image_size=16)
    a = embed_dataset(dm, "vit-micro", max_samples=40, cache_dir=tmp_path)
    assert a.tokens.shape == (40, 64)
    np.testing.assert_allclose(np.linalg.norm(a.tokens, axis=1), 1.0, atol=1e-5)
    assert np.bincount(a.labels, minlength=10).tolist() == [4] * 10
    entries = list(tmp_path.rglob("meta.json"))
    assert len(entries) == 1  # only the sample was encoded, and cached
    b = embed_dataset(dm, "vit-micro", max_samples=40, cache_dir=tmp_path)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert len(list(tmp_path.rglob("meta.json"))) == 1
