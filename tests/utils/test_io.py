"""Atomic writes leave complete files with normal permissions and no temporaries."""

from __future__ import annotations

import json
import os
import stat

import pytest

from transferkit.utils.io import atomic_write_json, atomic_write_text


def test_atomic_write_json_roundtrip_and_permissions(tmp_path):
    path = atomic_write_json(tmp_path / "a" / "m.json", {"x": 1, "p": tmp_path, "t": (1, 2)})
    assert json.loads(path.read_text()) == {"x": 1, "p": str(tmp_path), "t": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_failed_write_keeps_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "m.json", "old")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
