"""The torch-free ``DataOptions`` and the datamodule take the same arguments (what ``--data.*`` means on the
typed commands and on LightningCLI's must not drift apart)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from transferkit.data.datamodule import ImageClassificationDataModule
from transferkit.data.options import DataOptions
from transferkit.errors import UserError


def test_datamodule_signature_equals_the_options():
    params = list(inspect.signature(ImageClassificationDataModule.__init__).parameters.values())[1:]
    fields = dataclasses.fields(DataOptions)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields):
        assert p.annotation == f.type, p.name  # both are strings under ``from __future__ import annotations``
        assert p.default == f.default, p.name
    assert ImageClassificationDataModule.__init__.__doc__ == DataOptions.__doc__


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"source": "mnist"}, "unknown data.source 'mnist'"),
        ({"augment": "heavy"}, "unknown data.augment 'heavy'"),
        ({"on_corrupt": "ignore"}, "data.on_corrupt must be one of"),
        ({"image_size": 0}, "data.image_size must be >= 1"),
        ({"batch_size": -4}, "data.batch_size must be >= 1"),
        ({"eval_batch_size": 0}, "data.eval_batch_size must be >= 1"),
        ({"num_workers": -1}, "data.num_workers must be >= 0"),
    ],
)
def test_bad_values_are_one_line_errors_in_both(options, message):
    with pytest.raises(UserError, match=message):
        DataOptions(**options).check()
    with pytest.raises(UserError, match=message):
        ImageClassificationDataModule(**options)


def test_defaults_resolved_like_the_datamodule():
    dm = ImageClassificationDataModule(source="digits")
    opts = DataOptions(source="digits")
    assert (dm.num_workers, dm.hflip) == (opts.resolved_num_workers(), opts.resolved_hflip()) == (0, 0.0)
    assert DataOptions(source="shapes").resolved_hflip() == 0.5
