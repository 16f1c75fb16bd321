"""models/lvt.py: LVT against the official code's counts and operators."""

import re

import pytest
import torch

import models
from models.flops import count_macs, count_params
from models.lvt import CSA, RASA

# Official-code recounts (perf-anchors.md; lvt.md §A): the released classifier and the plain classifier.
PARAMS = {"lvt_cls": 5_521_844, "lvt": 3_686_604}
# fvcore GMACs at 224 (lvt.md §A; fvcore counts neither unfold nor fold, here as there).
MACS = {"lvt_cls": 0.897, "lvt": 0.869}
# The official headless classification model (3,430,180) carries four output LayerNorms, 2·(64+64+160+256) =
# 1,088 parameters, that the detection/segmentation backbone replaces by Identity (lvt.md §A).
BACKBONE_PARAMS = 3_430_180 - 1_088


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_and_macs_match_official_code(name):
    model = models.create(name)
    assert count_params(model) == PARAMS[name]
    assert round(count_macs(model, torch.randn(1, 3, 224, 224)) / 1e9, 3) == MACS[name]


@pytest.mark.parametrize("name", ["lvt", "lvt_cls"])
def test_dense_backbone_is_the_3_43m_downstream_backbone(name):
    dense = models.create(name, features_only=True)
    assert count_params(dense) == BACKBONE_PARAMS  # 3.43M (README: 3.4M backbone)
    feats = dense(torch.randn(1, 3, 200, 300))  # sizes that do not divide by 32
    assert [(f.shape[1], *f.shape[-2:]) for f in feats] == [(64, 50, 75), (64, 25, 38), (160, 13, 19), (256, 7, 10)]


def _csa_by_windows(csa: CSA, x: torch.Tensor) -> torch.Tensor:
    """CSA written out window by window from the description in lvt.md §A (B = 1)."""
    _, H, W, C = x.shape
    heads, k = csa.num_heads, 3
    pooled = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2, ceil_mode=True)[0]
    h, w = pooled.shape[-2:]
    maps = csa.weight.weight.reshape(9, C, C)  # one C->C map per kernel position
    out = torch.zeros(H, W, C)
    for i in range(h):
        for j in range(w):
            logits = csa.attn(pooled[:, i, j]).reshape(heads, 9, 9) * (C // heads) ** -0.5
            attn = logits.softmax(-1)
            values = torch.zeros(9, C)
            coords = [(2 * i - 1 + a, 2 * j - 1 + b) for a in range(k) for b in range(k)]
            for p, (r, c) in enumerate(coords):
                if 0 <= r < H and 0 <= c < W:
                    values[p] = maps[p] @ x[0, r, c]
            for p, (r, c) in enumerate(coords):
                if 0 <= r < H and 0 <= c < W:
                    for hd in range(heads):
                        sl = slice(hd * C // heads, (hd + 1) * C // heads)
                        out[r, c, sl] += attn[hd, p] @ values[:, sl]
    return csa.proj(out)[None]


def test_csa_matches_a_window_by_window_computation():
    torch.manual_seed(0)
    csa = CSA(8, num_heads=2).eval()
    x = torch.randn(1, 5, 6, 8)
    with torch.no_grad():
        assert torch.allclose(csa(x), _csa_by_windows(csa, x), atol=1e-5)


def test_rasa_recursion_and_shared_atrous_kernel():
    torch.manual_seed(0)
    rasa = RASA(16, num_heads=2, sr_ratio=2).eval()
    assert [n for n, _ in rasa.ds.named_parameters()] == ["weight"] and rasa.ds.rates == (1, 3, 5)
    x = torch.randn(2, 6, 8, 16)
    with torch.no_grad():
        once = torch.nn.functional.silu(rasa.attention(x))
        expected = torch.nn.functional.silu(rasa.attention(once + x))
        assert torch.allclose(rasa(x), expected, atol=1e-6)
        rasa.fused_attn = False
        assert torch.allclose(rasa(x), expected, atol=1e-5)


def test_stage_layout_matches_the_official_config():
    model = models.create("lvt")
    kinds = [type(s.blocks[0].attn).__name__ for s in model.stages]
    assert kinds == ["CSA", "RASA", "RASA", "RASA"]
    assert [s.blocks[0].attn.num_heads for s in model.stages] == [2, 2, 5, 8]
    assert [getattr(s.blocks[0].attn, "sr_ratio", None) for s in model.stages] == [None, 4, 2, 1]
    assert model.stages[1].blocks[0].mlp.fc1.out_channels == 512  # MLP ratio 8 in stage 2


def test_drop_path_is_honoured_and_off_by_default():
    assert not any(type(m).__name__ == "DropPath" for m in models.create("lvt_cls").modules())
    rates = [m.drop_prob for m in models.create("lvt_cls", drop_path_rate=0.1).modules()
             if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)


def test_classifier_combines_class_and_token_heads():
    torch.manual_seed(0)
    model = models.create("lvt_cls", num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        cls, aux = model.forward_heads(x)
        assert aux.shape == (2, 49, 10)
        assert torch.allclose(model(x), cls + 0.5 * aux.max(1).values)


def _official_layout(state: dict, prefix: str = "") -> dict:
    """Our keys -> the official `backbone.{stage}.{0|1}` layout (lvt.md §E)."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"stages\.(\d)\.(patch_embed|blocks)\.(.+)", key)
        out[prefix + (f"backbone.{m.group(1)}.{0 if m.group(2) == 'patch_embed' else 1}.{m.group(3)}" if m else key)] \
            = value
    return out


def test_official_classifier_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    ours = models.create("lvt_cls").eval()
    path = tmp_path / "lvt_imagenet.pth.tar"
    torch.save({"state_dict": _official_layout(ours.state_dict())}, path)
    loaded = models.create("lvt_cls", pretrained=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))
    dense = models.create("lvt", features_only=True, pretrained=path).eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(dense(x), ours.forward_dense(x)))


def test_official_segmentation_backbone_checkpoint_loads(tmp_path):
    dense = models.create("lvt", features_only=True)
    state = _official_layout(dense.state_dict(), prefix="backbone.")
    path = tmp_path / "segformer_lvt_ade20k.pth"
    torch.save({"state_dict": state}, path)
    loaded = models.create("lvt", features_only=True, pretrained=path)
    assert torch.equal(loaded.stages[2].blocks[1].attn.ds.weight, dense.stages[2].blocks[1].attn.ds.weight)
    del state["backbone.backbone.1.1.0.attn.q.weight"]
    torch.save(state, path)
    with pytest.raises(models.CheckpointError, match=r"missing keys \['stages.1.blocks.0.attn.q.weight'\]"):
        models.create("lvt", features_only=True, pretrained=path)


def test_plain_classifier_normalises_each_token_before_the_mean():
    """The official plain `lvt` classifies with head(norm(x).mean(...)): LayerNorm per token, then the mean."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = models.create("lvt").eval()
    with torch.no_grad():
        for p in (model.norm.weight, model.norm.bias):
            p.normal_()
        images = torch.randn(2, 3, 64, 64)
        tokens = model.forward_tokens(images)[-1]  # (B, H, W, C)
        normed = F.layer_norm(tokens, tokens.shape[-1:], model.norm.weight, model.norm.bias, model.norm.eps)
        expected = normed.mean((1, 2)) @ model.head.weight.T + model.head.bias
        assert torch.allclose(model(images), expected, atol=1e-5)
