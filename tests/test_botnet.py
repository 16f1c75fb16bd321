"""models/botnet.py: ResNet baselines and BoTNet variants."""

import pytest
import timm
import torch
import torchvision

import models
from models.botnet import MHSA, RelPosEmbed2d, VARIANTS
from models.flops import count_macs, count_params

# torchvision's ResNet-50, recounted on this machine (reference notes perf-anchors.md): params, fvcore GMACs.
RESNET50 = (25_557_032, 4.112)
# The same architectures in timm (bottleneck ResNets, torchvision layout).
TIMM_SAME = {"resnet50_baseline": "resnet50", "resnet101_baseline": "resnet101",
             "resnet152_baseline": "resnet152", "resnet200_baseline": "resnet200"}


def _variant(name):
    """The variant a registered name builds (T3..T6 are aliases of S1 models)."""
    return VARIANTS[models.aliases().get(name, name)]


def test_resnet50_matches_torchvision_counts():
    model = models.create("resnet50_baseline")
    assert count_params(model) == RESNET50[0]
    assert round(count_macs(model, torch.randn(1, 3, 224, 224)) / 1e9, 3) == RESNET50[1]


@pytest.mark.parametrize("name", sorted(TIMM_SAME))
def test_resnet_baselines_match_timm_param_counts(name):
    assert count_params(models.create(name)) == count_params(timm.create_model(TIMM_SAME[name]))


def test_resnet200_stage_sizes():
    assert VARIANTS["resnet200_baseline"].depths == (3, 24, 36, 3)


def test_bot50_and_bot_s1_50_sizes_against_quoted_counts():
    # BoT50 and BoT-S1-50: 20.8M as quoted from the paper by later papers (registry rows botnet bossnas_quote,
    # levit_quote; secondary evidence). Measured here: 20.85M / 20.86M (documented in the benchmark report).
    for name in ("botnet50", "botnet_s1_50"):
        assert abs(count_params(models.create(name)) / 1e6 - 20.8) < 0.1, name


def test_botnet_s1_59_macs_at_224_match_the_quoted_flops():
    # BoTNet-S1-59 (T3): 7.3 GFLOPs at 224, quoted by four papers (registry: botnet levit_quote et al.).
    assert round(count_macs(models.create("botnet_s1_59"), torch.randn(1, 3, 224, 224)) / 1e9, 1) == 7.3


def test_t_series_paper_counts_include_se_in_bot_blocks():
    # Paper T3-T7 counts (33.5/54.7/75.1/53.9/75.1M, quoted) exceed a faithful model by SE layers the authors'
    # counting script also gave the BoT blocks (c5 has no SE, paper §4.8.4). Adding them back lands within 0.4M.
    paper = {"botnet_t3": 33.5, "botnet_t4": 54.7, "botnet_t5": 75.1, "botnet_t6": 53.9, "botnet_t7": 75.1}
    for name, quoted in paper.items():
        v = _variant(name)
        se_per_block = 2048 * 128 * 2 + 128 + 2048  # SE(2048, ratio 0.0625) weights and biases
        assert abs((count_params(models.create(name)) + v.depths[3] * se_per_block) / 1e6 - quoted) < 0.4, name


def test_t_series_stage_sizes_and_resolutions():
    # Reference notes §G.3 (paper Table 13 per the NZ99 port): T3..T7.
    expect = {"botnet_t3": ((3, 4, 6, 6), 224), "botnet_t4": ((3, 4, 23, 6), 224),
              "botnet_t5": ((3, 4, 23, 12), 256), "botnet_t6": ((3, 4, 6, 12), 320),
              "botnet_t7": ((3, 4, 23, 12), 384)}
    for name, (depths, size) in expect.items():
        assert (_variant(name).depths, _variant(name).img_size) == (depths, size)


def test_bot_block_structure():
    model = models.create("botnet50")
    first = model.layer4[0]
    assert isinstance(first.attn, MHSA) and first.attn.num_heads == 4 and first.attn.qkv.bias is None
    assert isinstance(first.pool, torch.nn.AvgPool2d)  # strided c5 block: MHSA at 14×14, then 2×2 avg pool
    assert first.attn.pos_embed.height_rel.shape == (27, 128)
    assert model.layer4[1].attn.pos_embed.width_rel.shape == (13, 128)
    assert not any(isinstance(m, MHSA) for m in model.layer3.modules())
    assert not hasattr(first, "conv2")


def test_detection_tables_sized_from_resolution():
    model = models.create("botnet50", img_size=1024, features_only=True)
    assert model.layer4[0].attn.pos_embed.height_rel.shape == (127, 128)  # 64×64 map
    assert model.layer4[2].attn.pos_embed.width_rel.shape == (63, 128)    # 32×32 map


def test_s1_variants_keep_stride_16_with_se_and_silu():
    model = models.create("botnet_s1_59", features_only=True)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 16]
    assert model.layer2[0].se is not None and isinstance(model.act, torch.nn.SiLU)
    assert model.layer4[0].se is None  # no SE in BoT blocks


def test_relative_logits_match_a_direct_computation():
    torch.manual_seed(0)
    h, w, d = 3, 4, 8
    pe = RelPosEmbed2d((h, w), d)
    q = torch.randn(2, 1, h * w, d)
    logits = pe(q, (h, w))
    for i in range(h * w):
        for j in range(h * w):
            (hq, wq), (hk, wk) = divmod(i, w), divmod(j, w)
            ref = q[:, 0, i] @ (pe.height_rel[hk - hq + h - 1] + pe.width_rel[wk - wq + w - 1])
            assert torch.allclose(logits[:, 0, i, j], ref, atol=1e-5)


def test_smaller_maps_use_the_exact_centre_of_the_tables():
    torch.manual_seed(0)
    pe = RelPosEmbed2d((6, 6), 8)
    small = RelPosEmbed2d((3, 3), 8)
    with torch.no_grad():
        small.height_rel.copy_(pe.height_rel[3:8])
        small.width_rel.copy_(pe.width_rel[3:8])
    q = torch.randn(1, 1, 9, 8)
    assert torch.allclose(pe(q, (3, 3)), small(q, (3, 3)))


def test_nonlocal_and_extra_bot_blocks_can_be_inserted():
    nl = models.create("resnet50_baseline", extra_blocks={4: "nonlocal"})
    bot = models.create("resnet50_baseline", extra_blocks={4: "bot", 5: "bot"})
    assert len(nl.layer3) == 7 and type(nl.layer3[5]).__name__ == "NonLocalBlock"
    assert type(bot.layer3[5]).__name__ == "BoTBlock" and type(bot.layer4[2]).__name__ == "BoTBlock"
    x = torch.randn(1, 3, 224, 224)
    for m in (nl, bot):
        assert m(x).shape == (1, 1000)


def test_torchvision_resnet50_weights_give_identical_outputs(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    path = tmp_path / "resnet50_torchvision.pth"
    torch.save(reference.state_dict(), path)
    ours = models.create("resnet50_baseline", pretrained=path).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_gist_style_query_key_value_weights_convert(tmp_path):
    torch.manual_seed(0)
    native = models.create("botnet50").eval()
    gist = {}
    for k, v in native.state_dict().items():
        if k.endswith("attn.qkv.weight"):
            q, kk, vv = v.chunk(3, 0)
            base = k[: -len(".qkv.weight")]
            gist.update({f"{base}.query.weight": q, f"{base}.key.weight": kk, f"{base}.value.weight": vv})
        else:
            gist[k.replace("pos_embed.height_rel", "rel_pos_emb_h").replace("pos_embed.width_rel", "rel_pos_emb_w")] = v
    path = tmp_path / "bot50_gist.pth"
    torch.save(gist, path)
    loaded = models.create("botnet50", pretrained=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), native(x))


def test_imagenet_weights_load_into_a_detection_sized_model(tmp_path):
    path = tmp_path / "bot50_224.pth"
    torch.save({"model": models.create("botnet50").state_dict()}, path)
    det = models.create("botnet50", img_size=1024, features_only=True, pretrained=path)
    assert det.layer4[0].attn.pos_embed.height_rel.shape == (127, 128)


def test_timm_botnet_checkpoints_are_refused(tmp_path):
    path = tmp_path / "botnet26t.pth"
    torch.save(timm.create_model("botnet26t_256").state_dict(), path)
    with pytest.raises(models.CheckpointError, match="different network"):
        models.create("botnet50", pretrained=path)
