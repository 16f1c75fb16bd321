"""Make detectron2 v0.6 (installed as pure Python) import and run on torch 2.13 / numpy 2 / Pillow 13.

Import this module before anything from detectron2; `models` and `pipeline` do so themselves.
Each shim below is one item of the compatibility list in the README ("Environment"):

1. `detectron2._C` is absent (no compiled ops). A stand-in module lets detectron2 import; using one
   of its ops (rotated boxes, deformable conv, the C++ COCOeval) raises a clear error.
2. `PIL.Image.LINEAR`, removed in Pillow 10, is a default argument at import time.
3. numpy aliases `np.int`, `np.float`, `np.str`, `np.object`, removed in numpy 1.24.
4. `pkg_resources` (removed from setuptools 82) is used by `detectron2.model_zoo`.
5. `detectron2.export` imports caffe2, which torch 2.x no longer has.
6. torch >= 2.6 loads with `weights_only=True`; numpy arrays in converted checkpoints are allowed
   explicitly instead of turning the safe loader off.
7. `detectron2.engine.launch` needs CUDA for more than one process in v0.6; later detectron2 versions run the
   processes with gloo on a machine without GPUs. `distributed_launch()` returns v0.6's launch with that worker
   (pipeline/finetune.py uses it; importing detectron2.engine here would slow every other import).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
import warnings
from pathlib import Path

_UNAVAILABLE = (
    "detectron2 is installed as pure Python (see README, 'Environment'); its compiled op "
    "'{name}' (rotated boxes, deformable conv, C++ COCOeval) is unavailable. No paper table "
    "needs it; for COCO evaluation use COCOEvaluator(..., use_fast_impl=False)."
)


class _MissingCompiledOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise AttributeError(_UNAVAILABLE.format(name=name))


def _stub_compiled_ops() -> None:
    if "detectron2._C" in sys.modules:
        return
    module = _MissingCompiledOps("detectron2._C")
    module.__spec__ = importlib.machinery.ModuleSpec(
        "detectron2._C", loader=None, origin="not built (pure-Python detectron2)")
    sys.modules["detectron2._C"] = module


def _pillow_aliases() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def _numpy_aliases() -> None:
    import numpy as np

    for name, builtin in (("int", int), ("float", float), ("str", str), ("object", object),
                          ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, builtin)


def _pkg_resources() -> None:
    if importlib.util.find_spec("pkg_resources") is not None:  # setuptools < 82 still ships it
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        return
    module = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        spec = importlib.util.find_spec(package)
        return str(Path(next(iter(spec.submodule_search_locations))) / resource)

    def resource_exists(package: str, resource: str) -> bool:
        return Path(resource_filename(package, resource)).exists()

    module.resource_filename = resource_filename
    module.resource_exists = resource_exists
    sys.modules["pkg_resources"] = module


class _ExportPackage(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"detectron2.export.{name} needs caffe2, which torch 2.x does not ship; only "
            "TracingAdapter, scripting_with_instances and dump_torchscript_IR are available")


def _export_without_caffe2() -> None:
    if "detectron2.export" in sys.modules:
        return
    spec = importlib.util.find_spec("detectron2")
    if spec is None:
        return
    export_dir = Path(next(iter(spec.submodule_search_locations))) / "export"
    module = _ExportPackage("detectron2.export")
    module.__path__ = [str(export_dir)]
    module.__spec__ = importlib.machinery.ModuleSpec(
        "detectron2.export", loader=None, is_package=True)
    module.__spec__.submodule_search_locations = [str(export_dir)]
    sys.modules["detectron2.export"] = module
    from detectron2.export.flatten import TracingAdapter
    from detectron2.export.torchscript import dump_torchscript_IR, scripting_with_instances

    module.TracingAdapter = TracingAdapter
    module.scripting_with_instances = scripting_with_instances
    module.dump_torchscript_IR = dump_torchscript_IR
    sys.modules["detectron2"].export = module


def _safe_numpy_unpickling() -> None:
    import numpy as np
    import torch

    dtypes = {type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1")}
    torch.serialization.add_safe_globals(
        [np._core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes])


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                        timeout):
    """detectron2's per-process set-up for `launch`, with gloo where there is no GPU."""
    import logging

    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    cuda = torch.cuda.is_available()
    if cuda and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(f"{num_gpus_per_machine} processes per machine, but {torch.cuda.device_count()} "
                           "GPUs are visible; ask the job for as many GPUs as processes")
    rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=dist_url, world_size=world_size,
                                rank=rank, timeout=timeout)
    except Exception:
        logging.getLogger(__name__).error("process group set-up failed at %s", dist_url)
        raise
    for machine in range(world_size // num_gpus_per_machine):
        group = dist.new_group(list(range(machine * num_gpus_per_machine, (machine + 1) * num_gpus_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    if cuda:
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    main_func(*args)


def distributed_launch():
    """detectron2's `launch` (item 7 above)."""
    module = importlib.import_module("detectron2.engine.launch")
    module._distributed_worker = _distributed_worker
    return module.launch


def apply() -> None:
    _stub_compiled_ops()
    _pillow_aliases()
    _numpy_aliases()
    _pkg_resources()
    _safe_numpy_unpickling()
    _export_without_caffe2()


apply()
