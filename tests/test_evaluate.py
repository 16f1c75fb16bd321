"""pipeline/evaluate.py: semantic segmentation tested as mmseg tests it (whole, sliding windows, scales + flip)."""

import re

import pytest
import torch
from torch import nn

from pipeline import registry, settings
from pipeline.evaluate import SegmentationInference


class Pointwise(nn.Module):
    """A per-pixel classifier with detectron2's segmentor interface: its output at a pixel depends on that pixel
    only, so any tiling or mirroring of the input must give the same scores."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 1)
        self.calls = []

    def forward(self, inputs):
        self.calls.append(tuple(inputs[0]["image"].shape[-2:]))
        return [{"sem_seg": self.conv(x["image"][None] / 255)[0]} for x in inputs]


@pytest.fixture
def image():
    torch.manual_seed(1)
    smooth = nn.functional.interpolate(torch.rand(1, 3, 5, 7), (100, 130), mode="bilinear", align_corners=False)
    return {"image": smooth[0] * 255, "height": 100, "width": 130}


def test_sliding_windows_tile_the_image_as_mmseg_does(image):
    model = Pointwise()
    whole = SegmentationInference(model, (100, 1000))([image])[0]["sem_seg"]
    model.calls.clear()
    slide = SegmentationInference(model, (100, 1000), crop=48, stride=32)([image])[0]["sem_seg"]
    # mmseg slide_inference: ceil((100 - 48) / 32) + 1 = 3 rows, ceil((130 - 48) / 32) + 1 = 4 columns.
    assert len(model.calls) == 12 and set(model.calls) == {(48, 48)}
    torch.testing.assert_close(slide, whole)


def test_scales_and_flip_average_softmax_scores(image):
    model = Pointwise()
    one = SegmentationInference(model, (100, 1000))([image])[0]["sem_seg"]
    assert torch.allclose(one.sum(0), torch.ones(100, 130))
    model.calls.clear()
    tta = SegmentationInference(model, (100, 1000), ratios=(0.5, 1.0, 1.5), flip=True)([image])[0]["sem_seg"]
    assert model.calls == [(50, 65), (50, 65), (100, 130), (100, 130), (150, 195), (150, 195)]
    # Pointwise scores commute with mirroring, and resizing a smooth image changes them little.
    flipped = SegmentationInference(model, (100, 1000), flip=True)([image])[0]["sem_seg"]
    torch.testing.assert_close(flipped, one)
    assert (tta - one).abs().max() < 0.05


def test_hornet_upernet_is_tested_as_its_config_says():
    smoke = registry.load_yaml(registry.CONFIG_DIR / "config.yaml")["smoke"]
    s = settings.resolve("evaluate", "hornet_small_gf", "hornet_upernet", 0, "full", "quick", smoke, "160k")["values"]
    # hornet.md §D: slide mode, crop 512, stride 341; ms+flip = mmseg --aug-test.
    assert (*s["test_size"], *s["test_slide"], s["test_flip"]) == (512, 2048, 512, 341, True)
    assert s["test_ratios"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    lvt = settings.resolve("evaluate", "lvt", "lvt_segformer", 0, "full", "quick", smoke, "160k")["values"]
    assert lvt["test_slide"] is None


def _empty(path):
    path.write_bytes(b"")


def _truncated(path):
    torch.save({"model": nn.Linear(64, 64).state_dict(), "config": {}}, path)
    path.write_bytes(path.read_bytes()[:3000])


def _backbone_only(path):
    torch.save(nn.Linear(2, 2).state_dict(), path)


@pytest.mark.parametrize("write, message", [
    (_empty, r"model.pth: not a loadable weights-only checkpoint \("),
    (_truncated, r"model.pth: not a loadable weights-only checkpoint \("),
    (_backbone_only, r"model.pth: not a fine-tuned model of this pipeline \(no `config`\); evaluate the "
                     r"model_final.pth a finetune job writes"),
], ids=["0-byte", "truncated", "wrong-kind"])
def test_a_checkpoint_evaluate_cannot_read_is_one_line(tmp_path, capsys, write, message):
    from pipeline.evaluate import main

    write(tmp_path / "model.pth")
    settings.for_engine(tmp_path / "settings.yaml", "evaluate", "pvt_tiny")
    (tmp_path / "coco").mkdir()
    assert main(["--settings", str(tmp_path / "settings.yaml"), "--data", str(tmp_path / "coco"), "--work-dir",
                 str(tmp_path / "eval"), "--checkpoint", str(tmp_path / "model.pth"), "--metrics",
                 str(tmp_path / "metrics.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert re.search(message, err), err


def test_prepared_data_deleted_under_its_manifest_names_the_fix(tmp_path, capsys):
    from pipeline.evaluate import main

    settings.for_engine(tmp_path / "settings.yaml", "evaluate", "pvt_tiny")
    (tmp_path / "coco.manifest.json").write_text("{}")
    assert main(["--settings", str(tmp_path / "settings.yaml"), "--data", str(tmp_path / "coco"), "--work-dir",
                 str(tmp_path / "eval"), "--checkpoint", str(tmp_path / "model.pth"), "--metrics",
                 str(tmp_path / "metrics.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(
        f"{tmp_path}/coco: prepared data missing or incomplete, though its manifest {tmp_path}/coco.manifest.json "
        "exists; delete the manifest and run the target again (it re-runs prepare)")
