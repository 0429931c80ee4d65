import json

import pytest
import yaml

from transferkit.cli import main
from transferkit.errors import UserError
from transferkit.results import ResultsTable
from transferkit.select.zoo import REAL_MODELS, ZooMember, ZooRecipe

TINY = {"name": "sup", "start": "vit-micro:random", "method": "supervised", "source": "shapes", "epochs": 1,
        "limit_train_batches": 2, "batch_size": 16}  # fmt: skip
DINO = {"name": "dino", "start": "vit-micro:random", "method": "dino", "source": "digits", "epochs": 1,
        "limit_train_batches": 2, "batch_size": 16, "local_crop_size": 16}  # fmt: skip


def _recipe(tmp_path, members, include=("vit-micro:random",)):
    path = tmp_path / "zoo.yaml"
    recipe = {"image_size": 16, "targets": ["shapes", "textures"], "tasks_per_target": 1, "classes_per_task": 2,
              "include": list(include), "members": members}  # fmt: skip
    path.write_text(yaml.safe_dump({"recipe": recipe}))
    return path


def test_zoo_pretrains_saves_reuses_and_measures(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["rank", "zoo", "--config", str(_recipe(tmp_path, [TINY, DINO])), "--runs_dir", str(runs), "--cache_dir",
            str(tmp_path / "cache"), "--progress", "false", "--logreg.c_powers", "[0]"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "member sup: pretrained" in out and "member dino: pretrained" in out
    members = runs / "zoo" / "members"
    for m in ("sup", "dino"):
        meta = json.loads((members / m / "transferkit_backbone.json").read_text())
        assert meta["source"]["recipe"]["name"] == m and (members / m / "model.safetensors").is_file()
    rows = ResultsTable(runs / "performance.json").read()
    assert {r.protocol for r in rows} == {"logistic_regression", "score"}
    assert {r.dataset_name.split("[")[0] for r in rows} == {"shapes", "textures"}  # two distinct datasets
    assert {r.backbone for r in rows} == {"vit-micro:random", str(members / "sup"), str(members / "dino")}
    metrics = json.loads((runs / "rank-zoo" / "metrics.json").read_text())
    assert set(metrics["targets"]) == {"shapes", "textures"} and metrics["rows"] == len(rows)

    # the same recipe again: the saved members are reused, not trained; the rows are measured again
    assert main([*argv, "--name", "again"]) == 0
    out = capsys.readouterr().out
    assert "member sup: reused" in out and "member dino: reused" in out and "Trainer.fit" not in out
    # a changed recipe rebuilds that member only
    assert (
        main([*argv[:3], str(_recipe(tmp_path, [{**TINY, "blr": 2e-3}, DINO])), *argv[4:], "--name", "b"])
        == 0
    )
    out = capsys.readouterr().out
    assert "member sup: pretrained" in out and "member dino: reused" in out


def test_zoo_measures_a_real_pretrained_model(tmp_path, capsys):
    runs = tmp_path / "runs"
    config = _recipe(tmp_path, [TINY], include=["efficientnet-lite0"])
    argv = ["rank", "zoo", "--config", str(config), "--runs_dir", str(runs), "--cache_dir", str(tmp_path / "cache"),
            "--progress", "false", "--logreg.c_powers", "[0]"]  # fmt: skip
    assert main(argv) == 0
    assert "member sup: pretrained" in capsys.readouterr().out
    rows = ResultsTable(runs / "performance.json").read()
    real = [r for r in rows if r.backbone == "efficientnet-lite0"]
    # the real model beside the generated member, on both targets, with its probe accuracy and every score
    assert {r.backbone for r in rows} == {"efficientnet-lite0", str(runs / "zoo" / "members" / "sup")}
    assert {r.dataset_name.split("[")[0] for r in real} == {"shapes", "textures"}
    assert {r.protocol for r in real} == {"logistic_regression", "score"}
    assert {r.metric for r in real if r.protocol == "score"} >= {"logme", "hscore"}
    # measured with its packaged ImageNet weights, not a random init
    assert all(r.extra["pretrained"] and r.extra["num_params"] == 3_371_008 for r in real)
    accs = [r.value for r in real if r.protocol == "logistic_regression"]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)


def test_the_default_zoo_includes_the_real_models():
    from transferkit.backbones import registered_backbones

    assert REAL_MODELS == ("minilm-l6", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
    recipe = ZooRecipe()
    assert set(REAL_MODELS) <= set(recipe.include)
    entries = registered_backbones()
    for name in REAL_MODELS:  # registered with weights that need no download
        assert entries[name].offline
    # beside the generated members, and measured as they are (no member starts from them)
    assert len(recipe.members) == 6 and not {m.start for m in recipe.members} & set(REAL_MODELS)


BAD = [
    ({"name": "../x", "start": "vit-micro:random"}, "use letters, digits"),
    ({"name": "a", "start": "vit-micro:random", "method": "mae"}, "method 'mae'"),
    ({"name": "a", "start": "vit-micro:random", "epochs": 0}, "epochs >= 1"),
    ({"name": "a", "start": "vit-micro:random", "blr": -1.0}, "blr > 0"),
]


@pytest.mark.parametrize(("member", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_members(member, message):
    with pytest.raises(UserError, match=message):
        ZooMember(**member)


def test_bad_recipes():
    with pytest.raises(UserError, match="unique"):
        ZooRecipe(members=[ZooMember("a", "vit-micro:random"), ZooMember("a", "convnet-micro:random")])
    with pytest.raises(UserError, match="at least 2 backbones"):
        ZooRecipe(members=[], include=["vit-micro:random"])
    with pytest.raises(UserError, match="target"):
        ZooRecipe(targets=[])
    assert len(ZooRecipe().members) == 6  # the default zoo, as configs/rank/zoo.yaml


def test_the_config_file_is_the_default_recipe():
    from pathlib import Path

    doc = yaml.safe_load((Path(__file__).parents[2] / "configs" / "rank" / "zoo.yaml").read_text())["recipe"]
    assert ZooRecipe(**doc) == ZooRecipe()
