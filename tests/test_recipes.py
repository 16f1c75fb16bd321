"""config/recipes: every field says where it comes from, and the values equal the cited sources."""

import pytest

import models
from pipeline import recipes

PAPERS = ("pvt", "hornet", "lvt", "patchconvnet", "botnet")


@pytest.mark.parametrize("paper", PAPERS)
def test_every_field_cites_its_source(paper):
    for field, (kind, ref) in recipes.provenance("pretrain", paper).items():
        assert kind in ("paper", "official", "assumed") and ref.strip(), field


def test_per_variant_values_name_registered_models():
    registered = set(models.list_models()) | {"default"}
    for recipe in recipes.load("pretrain").values():
        for field in recipe["fields"].values():
            if isinstance(field["value"], dict):
                assert set(field["value"]) <= registered


def test_pvt_recipe_matches_paper_and_official_code():
    # PVT §5.1 and the official classification code (shared/papers/pvt.md §D).
    tiny, medium = recipes.pretrain("pvt", "pvt_tiny"), recipes.pretrain("pvt", "pvt_medium")
    assert tiny["lr_at_batch"] == pytest.approx(1e-3)  # §5.1: lr 1e-3 at batch 1024
    assert (tiny["epochs"], tiny["batch_size"], tiny["warmup_epochs"], tiny["weight_decay"]) == (300, 1024, 5, 0.05)
    assert (tiny["drop_path"], medium["drop_path"]) == (0.1, 0.3)
    assert (tiny["clip_grad"], medium["clip_grad"]) == (None, 1.0)
    assert (tiny["mixup"], tiny["cutmix"], tiny["random_erasing"], tiny["label_smoothing"]) == (0.8, 1.0, 0.25, 0.1)
    assert tiny["min_lr"] == 1e-5 and tiny["ema_decay"] is None and tiny["repeated_aug"] is True


def test_hornet_recipe_matches_official_training_notes():
    # HorNet TRAINING.md (shared/papers/hornet.md §D).
    t7, tgf = recipes.pretrain("hornet", "hornet_tiny_7x7"), recipes.pretrain("hornet", "hornet_tiny_gf")
    sgf, b7 = recipes.pretrain("hornet", "hornet_small_gf"), recipes.pretrain("hornet", "hornet_base_7x7")
    assert (t7["lr_at_batch"], t7["batch_size"], t7["warmup_epochs"], t7["ema_decay"]) == (4e-3, 4096, 20, 0.9999)
    assert [m["drop_path"] for m in (t7, sgf, b7)] == [0.2, 0.4, 0.5]
    assert [m["clip_grad"] for m in (t7, tgf, sgf, b7)] == [100.0, 1.0, 1.0, 5.0]
    assert (t7["randaugment"], sgf["randaugment"]) == ("rand-m9-mstd0.5-inc1", "rand-m12-mstd0.5-inc1")
    assert recipes.pretrain("hornet", "hornet_base_gf")["randaugment"] == "rand-m15-mstd0.5-inc1"
    assert t7["min_lr"] == 1e-6


def test_lvt_recipe_matches_official_command():
    # LVT README command and classification/main.py (shared/papers/lvt.md §D).
    lvt = recipes.pretrain("lvt", "lvt_cls")
    assert (lvt["lr_at_batch"], lvt["batch_size"], lvt["warmup_epochs"], lvt["epochs"]) == (1.6e-3, 1024, 20, 300)
    assert (lvt["mixup"], lvt["cutmix"], lvt["eval_crop_pct"], lvt["cooldown_epochs"]) == (0.0, 0.0, 0.96, 10)
    assert recipes.provenance("pretrain", "lvt")["token_labeling"][0] == "assumed"


def test_unverified_recipes_are_marked_assumed():
    # shared/papers/botnet.md and patchconvnet.md §D: the papers' recipes were not available.
    for paper in ("botnet", "patchconvnet"):
        sources = recipes.provenance("pretrain", paper)
        assert sources["lr"][0] == sources["epochs"][0] == "assumed"


def test_unknown_recipe_is_one_clear_error():
    from pipeline.registry import ConfigError

    with pytest.raises(ConfigError, match="no recipe 'pvtt'; recipes: pvt, hornet"):
        recipes.pretrain("pvtt", "pvt_tiny")
