"""Register prepared datasets with detectron2 under its standard names, pointing at the prepared roots.

detectron2 registers its built-in datasets at import, under `$DETECTRON2_DATASETS` (default ./datasets). These
functions replace the entries a prepared dataset provides, keeping detectron2's names, relative paths and
metadata:

- COCO: `coco_2017_{train,val}` (instances); with panoptic annotations also `coco_2017_{train,val}_panoptic`
  (standard), `..._panoptic_separated` (Panoptic FPN: instances + stuff labels) and `..._panoptic_stuffonly`.
- ADE20K: `ade20k_sem_seg_{train,val}` (150 classes, ignore label 255).
"""

from __future__ import annotations

from pathlib import Path

import models.compat  # noqa: F401  (before detectron2)

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import builtin, register_coco_instances
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.datasets.coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated

from pipeline.data.extract import ExtractError

COCO_SPLITS = ("coco_2017_train", "coco_2017_val")


def _forget(*names: str) -> None:
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def _under(root: Path, builtin_path: str) -> str:
    """detectron2's `coco/<path>` relative to a prepared COCO root."""
    return str(root / builtin_path.removeprefix("coco/"))


def register_coco(root: str | Path) -> list[str]:
    root = Path(root)
    names = []
    for name in COCO_SPLITS:
        image_root, json_file = builtin._PREDEFINED_SPLITS_COCO["coco"][name]
        if not Path(_under(root, json_file)).is_file():
            raise ExtractError(f"{_under(root, json_file)}: not found; prepare the COCO dataset first "
                               "(snakemake <data_root>/coco.manifest.json)")
        _forget(name)
        register_coco_instances(name, _get_builtin_metadata("coco"), _under(root, json_file), _under(root, image_root))
        names.append(name)

        prefix = f"{name}_panoptic"
        panoptic_root, panoptic_json, stuff_root = builtin._PREDEFINED_SPLITS_COCO_PANOPTIC[prefix]
        if not Path(_under(root, panoptic_json)).is_file():
            continue
        _forget(prefix, f"{prefix}_separated", f"{prefix}_stuffonly")
        args = (_under(root, image_root), _under(root, panoptic_root), _under(root, panoptic_json))
        register_coco_panoptic_separated(prefix, _get_builtin_metadata("coco_panoptic_separated"), *args,
                                         _under(root, stuff_root), _under(root, json_file))
        register_coco_panoptic(prefix, _get_builtin_metadata("coco_panoptic_standard"), *args,
                               _under(root, json_file))
        names += [prefix, f"{prefix}_separated", f"{prefix}_stuffonly"]
    return names


def register_ade20k(root: str | Path) -> list[str]:
    names = ["ade20k_sem_seg_train", "ade20k_sem_seg_val"]
    if not (Path(root) / "ADEChallengeData2016" / "annotations_detectron2").is_dir():
        raise ExtractError(f"{root}: no ADEChallengeData2016/annotations_detectron2; prepare the ADE20K dataset "
                           "first (snakemake <data_root>/ade20k.manifest.json)")
    _forget(*names)
    builtin.register_all_ade20k(str(root))
    return names


REGISTER = {"coco": register_coco, "ade20k": register_ade20k}
