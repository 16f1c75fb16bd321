"""models/baselines.py: the PVT tables' ResNet/ResNeXt rows take torchvision's ImageNet weights as they are."""

import pytest
import torch
import torchvision

import models

# torchvision's own constructors are the reference (resnext101_32x4d is not in torchvision: its count is PVT
# Table 2's 44.2 M).
TORCHVISION = {"resnet18_torchvision": "resnet18", "resnet50_torchvision": "resnet50",
               "resnet101_torchvision": "resnet101", "resnext101_64x4d_torchvision": "resnext101_64x4d"}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_checkpoint_loads_unchanged(name, tmp_path):
    reference = getattr(torchvision.models, TORCHVISION[name])().eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    ours = models.create(name, pretrained=tmp_path / "tv.pth").eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_resnext101_32x4d_matches_pvt_table2_parameters():
    model = models.create("resnext101_32x4d_torchvision")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 44.2  # PVT Table 2


def test_dense_mode_gives_res2_to_res5(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pth")
    dense = models.create("resnet18_torchvision", features_only=True, pretrained=tmp_path / "tv.pth")
    shapes = [tuple(f.shape) for f in dense(torch.randn(1, 3, 64, 64))]
    assert shapes == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    assert [f["name"] for f in dense.feature_info] == ["res2", "res3", "res4", "res5"]
