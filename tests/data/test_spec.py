"""DataSpec: one identity of a dataset (key, name, spec round trip, class subsets) and the --data shorthand."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.data.spec import DataSpec, expand_data_shorthand
from transferkit.errors import UserError


def test_key_name_and_round_trip():
    spec = DataSpec({"source": "digits", "image_size": 16})
    again = DataSpec.from_dict(spec.to_dict())
    assert again == spec and again.key() == spec.key() and spec.name() == "digits"
    assert DataSpec({"source": "digits", "image_size": 24}).key() != spec.key()  # the image size is content
    sub = spec.with_classes(["1", "3"])
    assert sub.key() != spec.key() and sub.name() == "digits[1,3]"
    dm = spec.build()
    idx = sub.subset_indices("train")
    assert set(np.asarray(dm.dataset("train").targets)[idx]) == {1, 3}
    d = sub.describe()
    assert d["num_classes"] == 2 and d["class_names"] == ["1", "3"] and d["counts"]["train"] == len(idx)


@pytest.mark.parametrize(
    "spec, message",
    [
        (lambda: DataSpec({"source": "digits"}, ["1"]), "at least 2 distinct classes"),
        (lambda: DataSpec({"source": "digits"}, ["1", "x"]).build(), r"data.classes \['x'\]"),
        (lambda: DataSpec.from_dict({"classes": []}), "not a dataset spec"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        spec()


def test_shorthand(tmp_path):
    assert expand_data_shorthand(["--data", "digits", "--x", "1"]) == ["--data.source", "digits", "--x", "1"]
    assert expand_data_shorthand([f"--data={tmp_path}"]) == [
        "--data.source",
        "imagefolder",
        "--data.path",
        str(tmp_path),
    ]
    assert expand_data_shorthand(["--data", "cifar10:/d"]) == [
        "--data.source",
        "cifar10",
        "--data.path",
        "/d",
    ]
    assert expand_data_shorthand(["--data", "l.csv"]) == ["--data.source", "csv", "--data.path", "l.csv"]
    assert expand_data_shorthand(["--data", "c.yaml"]) == ["--data", "c.yaml"]
    with pytest.raises(UserError, match="neither a data source"):
        expand_data_shorthand(["--data", str(tmp_path / "missing")])
