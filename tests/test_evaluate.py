"""pipeline/evaluate.py: semantic segmentation tested as mmseg tests it (whole, sliding windows, scales + flip)."""

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
