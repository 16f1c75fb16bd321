"""The model registry: `create(name, ...)`, `list_models()`, and registration with timm's registry."""

from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_FILTERS: dict[str, Callable[[dict, nn.Module], dict]] = {}


class CheckpointError(Exception):
    """An official or project checkpoint that does not fit the model; the message lists the keys."""


def register_model(checkpoint_filter: Callable[[dict, nn.Module], dict] | None = None):
    """Register a builder under its function name, here and in timm (so `timm.create_model` works)."""

    def wrap(fn):
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        if name in timm.list_models():
            raise ValueError(f"model {name!r} would shadow timm's model of the same name")
        _BUILDERS[name] = fn
        if checkpoint_filter is not None:
            _FILTERS[name] = checkpoint_filter
        timm.models.register_model(fn)
        return fn

    return wrap


def family(name: str) -> str:
    """The paper family a registered model belongs to: its module's name (`pvt`, `botnet`, ...)."""
    return _BUILDERS[name].__module__.rsplit(".", 1)[-1]


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint's state dict without unpickling arbitrary objects (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — torch raises several types; one clear line for the user
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({str(e).splitlines()[0]})") from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return ckpt


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    # Detection/segmentation checkpoints hold the backbone under `backbone.`; the filters see bare keys.
    raw = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in read_checkpoint(path).items()}
    filt = _FILTERS.get(name)
    try:
        state = filt(raw, model) if filt is not None else raw
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: {e.args[0] if e.args else e}") from None
    # Unexpected keys are reported as the file names them (where a key maps one-to-one).
    origin = {}
    if filt is not None:
        for key, value in raw.items():
            try:
                mapped = filt({key: value}, model)
            except (KeyError, ValueError):  # keys that only convert together (e.g. q/k/v -> qkv)
                continue
            if len(mapped) == 1:
                origin[next(iter(mapped))] = key
    expected = model.state_dict()
    # Layers a mode adds on top of the checkpoint's network (e.g. a dense model's output norms) may be absent:
    # they keep their init, as fine-tuning from ImageNet weights does.
    new_layers = tuple(getattr(model, "new_layers", ()))
    for key, value in expected.items():
        if key.startswith(new_layers) and key not in state:
            state[key] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(origin.get(k, k) for k in set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match {name}: missing keys {missing}; unexpected keys {unexpected}")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch for {name}: {'; '.join(bad)}")
    model.load_state_dict(state)


def build(cls: type[nn.Module], variant, name: str, pretrained=None, **kwargs) -> nn.Module:
    """What every registered builder does: construct `cls(variant, ...)`, then load `pretrained`."""
    if pretrained is True:
        raise CheckpointError(f"{name}: weights are not fetched from a hub; pass pretrained=<path to a checkpoint>")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # passed by timm.create_model
        kwargs.pop(key, None)
    # Networks without size-dependent parameters (LVT) take any input; the training code passes img_size to all.
    if "img_size" in kwargs and "img_size" not in inspect.signature(cls).parameters:
        kwargs.pop("img_size")
    model = cls(variant, **kwargs)
    if pretrained:
        load_checkpoint(model, pretrained, name)
    return model


def create(name: str, num_classes: int = 1000, pretrained: str | Path | None = None,
           features_only: bool = False, **overrides) -> nn.Module:
    """Build a registered model; `pretrained` is a checkpoint path (official layout or the project's)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _BUILDERS[name](pretrained=pretrained, num_classes=num_classes, features_only=features_only,
                           **overrides)
