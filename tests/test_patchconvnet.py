"""models/patchconvnet.py: PatchConvNet against the official code's counts, and its attention pooling."""

import pytest
import torch

import models
from models.flops import count_macs, count_params

# Recounts of the official code at 224 (patchconvnet.md §A, VERIFIED-CODE): parameters and the unit they are
# known to (S60/S120 exact in perf-anchors.md, the others to 0.001M), and fvcore GMACs.
PARAMS = {"patchconvnet_s60": (25_231_096, 1), "patchconvnet_s120": (47_723_896, 1),
          "patchconvnet_b60": (99_389_000, 1000), "patchconvnet_b120": (188_611_000, 1000),
          "patchconvnet_l60": (176_010_000, 1000), "patchconvnet_l120": (334_294_000, 1000),
          "patchconvnet_s60_multi": (25_615_000, 1000)}
MACS = {"patchconvnet_s60": 4.003, "patchconvnet_s120": 7.539, "patchconvnet_b60": 15.850,
        "patchconvnet_b120": 29.866, "patchconvnet_l60": 28.105, "patchconvnet_l120": 52.968,
        "patchconvnet_s60_multi": 5.337}
# Same network at other resolutions (README FLOPs, fvcore MACs in the notes).
MACS_AT = {384: 11.751, 512: 20.886}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_and_macs_match_official_code(name):
    model = models.create(name)
    count, unit = PARAMS[name]
    assert round(count_params(model) / unit) == count // unit
    assert round(count_macs(model, torch.randn(1, 3, 224, 224)) / 1e9, 3) == MACS[name]
    if name == "patchconvnet_s60":
        for size, gmacs in MACS_AT.items():
            assert round(count_macs(model, torch.randn(1, 3, size, size)) / 1e9, 3) == gmacs


def test_resnet50_attention_pooling_costs_what_the_seed_states():
    # Issue 4 / seed: ResNet-50 4.1 GFLOPs -> 4.6 with the attention-pooling head in place of average pooling.
    base = count_macs(models.create("resnet50_baseline"), torch.randn(1, 3, 224, 224))
    pooled = count_macs(models.create("resnet50_attnpool"), torch.randn(1, 3, 224, 224))
    assert (round(base / 1e9, 1), round(pooled / 1e9, 1)) == (4.1, 4.6)


def test_layer_scale_init_per_variant():
    assert models.create("patchconvnet_s60").blocks[0].gamma_1.detach().eq(1e-4).all()
    s120 = models.create("patchconvnet_s120")
    assert s120.blocks[0].gamma_1.detach().eq(1e-6).all()
    assert s120.blocks_token_only[0].gamma_2.detach().eq(1e-6).all()


@pytest.mark.parametrize("name,patches", [("patchconvnet_s60", 14 * 14), ("resnet50_attnpool", 7 * 7)])
def test_attention_pooling_maps_sum_to_one(name, patches):
    torch.manual_seed(0)
    model = models.create(name).eval()
    with torch.no_grad():
        maps = model.attention_maps(torch.randn(2, 3, 224, 224))
    assert maps.shape == (2, 1, 1 + patches)  # the class token and the patches (stride 16 or 32)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 1), atol=1e-5) and (maps >= 0).all()


def test_per_class_attention_maps():
    torch.manual_seed(0)
    model = models.create("patchconvnet_s60_multi", num_classes=5).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 160)
        logits = model(x)
        maps = model.attention_maps(x)
    assert logits.shape == (1, 5)
    assert maps.shape == (1, 5, 14 * 10)  # one map per class over the patches only
    assert torch.allclose(maps.sum(-1), torch.ones(1, 5), atol=1e-5)


def test_official_checkpoint_round_trip_and_dense_mode(tmp_path):
    torch.manual_seed(0)
    ours = models.create("patchconvnet_s60_multi", num_classes=3).eval()
    state = {k.replace("head.heads.", "head."): v for k, v in ours.state_dict().items()}
    assert "head.2.weight" in state and "patch_embed.proj.6.0.weight" in state  # the official layout
    path = tmp_path / "s60_multi.pth"
    torch.save({"model": state}, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(models.create("patchconvnet_s60_multi", num_classes=3, pretrained=path).eval()(x), ours(x))
    dense = models.create("patchconvnet_s60", features_only=True, pretrained=path)
    assert torch.equal(dense.blocks[59].attn.qkv_pos[4].conv_reduce.weight,
                       ours.blocks[59].attn.qkv_pos[4].conv_reduce.weight)
    feats = dense(torch.randn(1, 3, 192, 256))
    assert [(f.shape[1], *f.shape[-2:]) for f in feats] == [(384, 48, 64), (384, 24, 32), (384, 12, 16), (384, 6, 8)]
    del state["blocks.7.gamma_1"]
    torch.save(state, path)
    with pytest.raises(models.CheckpointError, match=r"missing keys \['blocks.7.gamma_1'\]"):
        models.create("patchconvnet_s60_multi", num_classes=3, pretrained=path)
