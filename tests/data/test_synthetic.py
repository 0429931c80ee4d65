import numpy as np
import pytest

from transferkit.data.spec import DataSpec
from transferkit.data.synthetic import SHAPE_CLASSES, SYNTHETIC_PER_CLASS, TEXTURE_CLASSES, synthetic_images


@pytest.mark.parametrize(("kind", "classes"), [("shapes", SHAPE_CLASSES), ("textures", TEXTURE_CLASSES)])
def test_generated_sets_are_deterministic_and_balanced(kind, classes):
    a, labels, names = synthetic_images(kind, 32)
    b, _, _ = synthetic_images(kind, 32)
    assert a.shape == (len(classes) * SYNTHETIC_PER_CLASS, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert names == list(classes) and np.bincount(labels).tolist() == [SYNTHETIC_PER_CLASS] * len(classes)
    assert len({a[i].tobytes() for i in range(len(a))}) == len(a)  # no two images alike
    big, _, _ = synthetic_images(kind, 48)
    assert big.shape[1:] == (48, 48, 3)


def test_the_sets_differ_in_kind():
    shapes, _, _ = synthetic_images("shapes", 32)
    textures, _, _ = synthetic_images("textures", 32)
    # shapes: a flat noisy background around one object; textures: the pattern fills the image
    edge = lambda x: np.abs(np.diff(x.astype(np.float64), axis=2)).mean()  # noqa: E731
    assert edge(textures) > 1.2 * edge(shapes)


@pytest.mark.parametrize("source", ["shapes", "textures"])
def test_a_spec_builds_the_source_with_the_fixed_split(source):
    spec = DataSpec({"source": source, "image_size": 16})
    dm = spec.build()
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 720, "val": 240, "test": 240}
    image, label = dm.dataset("train")[0]
    assert tuple(image.shape) == (3, 16, 16) and 0 <= label < 6
    assert spec.key() == DataSpec({"source": source, "image_size": 16}).key()
    assert spec.key() != DataSpec({"source": source, "image_size": 32}).key()
    sub = spec.with_classes(list(dm.class_names[:2]))
    assert sub.name() == f"{source}[{dm.class_names[0]},{dm.class_names[1]}]"
