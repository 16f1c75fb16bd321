"""config/recipes: every field says where it comes from, and the values equal the cited sources."""

import pytest

import models
from pipeline import recipes, registry, tasks

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


def test_finetune_recipes_cite_sources_and_name_known_schedules():
    for name, recipe in recipes.load("finetune").items():
        for field, (kind, ref) in recipes.provenance("finetune", name).items():
            assert kind in ("paper", "official", "assumed") and ref.strip(), (name, field)
        assert recipes.schedules(name)


def test_pvt_detection_and_segmentation_recipes_match_the_paper():
    # PVT §5.2 (mmdet v2.13) and §5.3 (mmseg v0.13), shared/papers/pvt.md §D.
    one = recipes.finetune("pvt_retinanet", "pvt_small", "1x")
    three = recipes.finetune("pvt_mask_rcnn", "pvt_small", "3x_ms")
    assert (one["lr"], one["weight_decay"], one["batch_size"], one["epochs"], one["steps"]) == (1e-4, 1e-4, 16, 12,
                                                                                              [8, 11])
    assert (one["warmup_iters"], one["warmup_ratio"], one["short_side"], one["max_size"]) == (500, 0.001, [800], 1333)
    assert (three["epochs"], three["short_side"], three["sample"]) == (36, [640, 800], "range")
    seg = recipes.finetune("pvt_semantic_fpn", "pvt_small", "80k")
    assert (seg["framework"], seg["iters"], seg["poly_power"], seg["lr"], seg["batch_size"]) == (
        "semantic_fpn", 80000, 0.9, 1e-4, 16)
    assert recipes.resources("finetune", "pvt_semantic_fpn", "pvt_small", "80k")["gpus"] == 4  # §5.3: 4 V100


def test_hornet_dense_recipes_match_the_official_configs():
    # shared/papers/hornet.md §D: Cascade Mask R-CNN 3x and UperNet 160k.
    t = recipes.finetune("hornet_cascade_mask_rcnn", "hornet_tiny_gf", "3x_ms")
    b = recipes.finetune("hornet_cascade_mask_rcnn", "hornet_base_gf", "3x_ms")
    assert (t["epochs"], t["steps"], t["lr"], t["weight_decay"]) == (36, [27, 33], 2e-4, 0.05)
    assert (t["layer_decay"], b["layer_decay"], t["drop_path"], b["drop_path"]) == (0.7, 0.8, 0.4, 0.7)
    assert t["short_side"] == list(range(480, 801, 32))
    assert (t["layer_decay_type"], t["layer_decay_layers"]) == ("layer_wise", 12)
    assert [(recipes.finetune("hornet_upernet", m, "160k")["layer_decay_type"],
             recipes.finetune("hornet_upernet", m, "160k")["layer_decay_layers"])
            for m in ("hornet_tiny_gf", "hornet_small_gf", "hornet_base_7x7")] == [
        ("stage_wise", 6), ("stage_wise", 12), ("stage_wise", 12)]
    u = recipes.finetune("hornet_upernet", "hornet_small_7x7", "160k")
    assert (u["iters"], u["lr"], u["weight_decay"], u["warmup_iters"], u["layer_decay"], u["drop_path"]) == (
        160000, 1e-4, 0.05, 1500, 0.9, 0.3)
    assert recipes.resources("pretrain", "hornet", "hornet_tiny_7x7") == {"gpus": 8, "nodes": 4, "minutes": 72 * 60}


def test_lvt_dense_recipes_match_the_official_configs():
    # shared/papers/lvt.md §D: SegFormer 160k and Panoptic FPN 1x/3x.
    seg = recipes.finetune("lvt_segformer", "lvt", "160k")
    assert (seg["lr"], seg["weight_decay"], seg["head_lr_mult"], seg["poly_power"], seg["crop"]) == (
        6e-5, 0.01, 10.0, 1.0, 512)
    one, three = (recipes.finetune("lvt_panoptic_fpn", "lvt", s) for s in ("1x", "3x_ms"))
    assert (one["lr"], three["lr"], three["short_side"], one["weight_decay"]) == (4e-4, 3e-4, [640, 800], 1e-4)


def test_botnet_schedules_carry_the_three_jitter_ranges():
    plans = recipes.schedules("botnet_mask_rcnn")
    assert {tuple(p["jitter"]) for p in plans.values()} == {(0.8, 1.25), (0.5, 2.0), (0.1, 2.0)}
    assert {p["size"] for p in plans.values()} == {1024}
    assert recipes.provenance("finetune", "botnet_mask_rcnn")["schedules"][0] == "assumed"


def test_schema_names_the_engine_tasks():
    schema = registry.load_yaml(registry.SCHEMA_DIR / "recipes.schema.yaml")
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "framework" in node and "enum" in node["framework"].get("properties", {}).get("value", {}):
                found.append(node["framework"]["properties"]["value"]["enum"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    assert found and all(sorted(e) == sorted(tasks.TASKS) for e in found)


@pytest.mark.parametrize("field, value, kind", [("lr", -1e-4, "finetune"), ("lr", "1e-4", "pretrain"),
                                                ("drop_path", 1.5, "pretrain"), ("batch_size", 0.5, "finetune")])
def test_a_value_of_the_wrong_type_or_out_of_range_is_one_line(tmp_path, field, value, kind):
    doc = registry.load_yaml(recipes.RECIPES_DIR / f"{kind}.yaml")
    name = next(iter(doc["recipes"]))
    doc["recipes"][name]["fields"][field]["value"] = value
    with pytest.raises(registry.ConfigError) as err:
        registry.validate(doc, "recipes.schema.yaml", tmp_path / f"{kind}.yaml")
    line = str(err.value)
    assert "\n" not in line and f"{kind}.yaml" in line and field in line
