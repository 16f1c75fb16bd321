"""models/pvt.py: PVT v1 against the paper and the official code's counts."""

import pytest
import timm
import torch

import models
from models.flops import count_macs, count_params
from models.pvt import VARIANTS

# (params, fvcore GMACs at 224) of the official classification models, recounted from the official
# code (reference notes pvt.md §A "VERIFIED-CODE"; PVT Table 2 prints the rounded 13.2M/1.9G, ...).
OFFICIAL = {
    "pvt_tiny": (13_229_288, 1.944),
    "pvt_small": (24_485_864, 3.834),
    "pvt_medium": (44_208_104, 6.686),
    "pvt_large": (61_369_320, 9.851),
}


def _official_noop_resize_macs(model) -> int:
    """The official `_get_pos_embed` compares every stage's H*W with stage 1's patch count, so at 224 it
    bilinearly "resizes" the stage 2-4 position embeddings to their own size (an identity). fvcore counts
    4 MACs per output element of that resize; the project skips the no-op, so add it back to compare."""
    total = 0
    for stage in model.stages[1:]:
        total += 4 * stage.grid * stage.grid * stage.pos_embed.shape[-1]
    return total


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_params_and_macs_match_official_code(name):
    model = models.create(name)
    params, gmacs = OFFICIAL[name]
    assert count_params(model) == params
    macs = count_macs(model, torch.randn(1, 3, 224, 224)) + _official_noop_resize_macs(model)
    assert round(macs / 1e9, 3) == gmacs


def test_table1_settings_are_shared_by_all_variants():
    for v in VARIANTS.values():
        assert v.embed_dims == (64, 128, 320, 512)
        assert v.num_heads == (1, 2, 5, 8)
        assert v.sr_ratios == (8, 4, 2, 1)
        assert v.mlp_ratios == (8, 8, 4, 4)


def test_dense_mode_returns_four_maps_at_strides_4_to_32():
    model = models.create("pvt_tiny", features_only=True).eval()
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == [(64, 4), (128, 8), (320, 16), (512, 32)]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 256, 320))  # not the pretraining size: position embeddings resized
    assert [tuple(f.shape) for f in feats] == [(2, 64, 64, 80), (2, 128, 32, 40), (2, 320, 16, 20), (2, 512, 8, 10)]
    assert not hasattr(model, "cls_token") and not hasattr(model, "head")


def test_position_embedding_at_pretraining_size_is_untouched():
    model = models.create("pvt_tiny")
    stage = model.stages[0]
    assert torch.equal(stage.position_embedding((56, 56)), stage.pos_embed)
    assert stage.position_embedding((40, 60)).shape == (1, 2400, 64)


def test_layernorm_eps_and_qkv_bias_follow_the_official_code():
    model = models.create("pvt_small")
    blk = model.stages[0].blocks[0]
    assert blk.norm1.eps == 1e-6 and blk.norm2.eps == 1e-6 and model.norm.eps == 1e-6
    assert model.stages[0].patch_embed.norm.eps == 1e-5 and blk.attn.norm.eps == 1e-5
    assert blk.attn.q.bias is not None and blk.attn.kv.bias is not None
    assert not hasattr(model.stages[3].blocks[0].attn, "sr")


def test_drop_path_grows_linearly_over_all_blocks():
    model = models.create("pvt_small", drop_path_rate=0.1)
    rates = [float(getattr(b.drop_path, "drop_prob", 0.0)) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 16).tolist())


def _to_official_layout(state: dict) -> dict:
    """Our keys renamed to the official release's layout (pvt.md §E)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "stages":
            i = int(parts[1]) + 1
            if parts[2] == "pos_embed":
                key = f"pos_embed{i}"
            elif parts[2] == "patch_embed":
                key = f"patch_embed{i}." + ".".join(parts[3:])
            elif parts[2] == "blocks":
                key = f"block{i}." + ".".join(parts[3:])
        out[key] = value
    return out


def test_official_classification_checkpoint_loads(tmp_path):
    reference = models.create("pvt_tiny")
    path = tmp_path / "pvt_tiny.pth"
    torch.save({"model": _to_official_layout(reference.state_dict())}, path)
    loaded = models.create("pvt_tiny", pretrained=path)
    for k, v in reference.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), reference.eval()(x))


def test_official_detection_backbone_checkpoint_loads(tmp_path):
    reference = models.create("pvt_tiny")
    state = {f"backbone.{k}": v for k, v in _to_official_layout(reference.state_dict()).items()
             if not k.startswith(("norm.", "head.")) and k != "cls_token"}
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)  # detector parts are not the backbone's
    path = tmp_path / "mask_rcnn_pvt_t.pth"
    torch.save({"state_dict": {k: v for k, v in state.items() if k.startswith("backbone.")}}, path)
    dense = models.create("pvt_tiny", features_only=True, pretrained=path)
    assert torch.equal(dense.stages[3].pos_embed, reference.stages[3].pos_embed)


def test_checkpoint_with_missing_keys_is_refused_listing_them(tmp_path):
    state = _to_official_layout(models.create("pvt_tiny").state_dict())
    del state["block1.0.attn.kv.weight"]
    state["block9.0.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(models.CheckpointError) as err:
        models.create("pvt_tiny", pretrained=path)
    assert "stages.0.blocks.0.attn.kv.weight" in str(err.value) and "block9.0.extra" in str(err.value)


def test_checkpoint_loading_never_unpickles_objects(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(models.CheckpointError, match="weights-only"):
        models.create("pvt_tiny", pretrained=path)


def test_registered_in_timm_without_shadowing():
    assert set(models.list_models("pvt_*")) == set(OFFICIAL)
    model = timm.create_model("pvt_tiny", num_classes=10)
    assert model.head.out_features == 10
