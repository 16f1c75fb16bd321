"""The model registry: `create(name, ...)`, `list_models()`, and registration with timm's registry."""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import logging
import re
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_FILTERS: dict[str, Callable[[dict, nn.Module], dict]] = {}
_FEATURES: dict[str, Callable[[], list[dict]]] = {}
_ALIASES: dict[str, str] = {}


class CheckpointError(Exception):
    """An official or project checkpoint that does not fit the model; the message lists the keys."""


def register_family(module: str, variants: dict, checkpoint_filter: Callable[[dict, nn.Module], dict],
                    feature_info: Callable[[object], list[dict]], network: type[nn.Module] | None = None,
                    aliases: dict[str, str] | None = None) -> None:
    """Register a family's variants, here and in timm (so `timm.create_model` works), from its variant data:
    `variants` maps each name to its variant (built by `network`) or to (network class, variant).
    `feature_info(variant)` gives the dense-mode outputs without building the network. An alias builds the
    variant it names."""
    aliases = aliases or {}
    for name, entry in {**variants, **{alias: variants[target] for alias, target in aliases.items()}}.items():
        cls, variant = entry if isinstance(entry, tuple) else (network, entry)
        _register(module, name, cls, variant, checkpoint_filter, feature_info)
    _ALIASES.update(aliases)


def _register(module: str, name: str, cls, variant, checkpoint_filter, feature_info) -> None:
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} registered twice")
    if name in timm.list_models():
        raise ValueError(f"model {name!r} would shadow timm's model of the same name")

    def builder(pretrained=None, **kwargs):
        return build(cls, variant, name, pretrained, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = module
    builder.__doc__ = f"{name}: {cls.__name__} {variant!r}"
    _BUILDERS[name] = builder
    _FILTERS[name] = checkpoint_filter
    _FEATURES[name] = lambda: feature_info(variant)
    timm.models.register_model(builder)


def family(name: str) -> str:
    """The paper family a registered model belongs to: its module's name (`pvt`, `botnet`, ...)."""
    return _BUILDERS[name].__module__.rsplit(".", 1)[-1]


def list_models(pattern: str = "*", aliases: bool = True) -> list[str]:
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern) and (aliases or n not in _ALIASES))


def aliases() -> dict[str, str]:
    """alias -> the registered name it builds (`botnet_t3` -> `botnet_s1_59`)."""
    return dict(_ALIASES)


def feature_info(name: str) -> list[dict]:
    """A model's dense-mode outputs (name res2..res5, channels, stride, module), from its variant data."""
    if name not in _FEATURES:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _FEATURES[name]()


# Plain metadata that released training checkpoints carry beside their tensors, allowed by name: DeiT-style
# scripts save the run's arguments as an argparse.Namespace. Nothing else beyond tensors and containers (and the
# numpy arrays models/compat.py allows) is unpickled.
SAFE_GLOBALS = [argparse.Namespace]


def load_file(path: str | Path):
    """What a checkpoint file holds, loaded weights-only through the allow-list above; a file that needs any
    other object (a pickle of code), is empty, truncated or not a checkpoint at all is one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".pkl":
        raise CheckpointError(f"{path}: a pickle file; only weights-only torch checkpoints (.pth/.pt) are read, "
                              "since unpickling can run code")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — torch raises several types; one clear line for the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({first})") from None


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint's state dict without unpickling arbitrary objects (weights_only)."""
    ckpt = load_file(path)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return ckpt


# Top-level parts of mmdet/mmseg models besides the backbone: a file with any of them is a whole detector or
# segmentor, of which a backbone takes the `backbone.*` keys.
DENSE_PARTS = ("neck.", "decode_head.", "auxiliary_head.", "rpn_head.", "roi_head.", "bbox_head.", "mask_head.",
               "semantic_head.", "panoptic_head.", "panoptic_fusion_head.")


def backbone_keys(state: dict, path: str | Path) -> dict:
    """The keys a backbone reads from a checkpoint: all of a classifier's; a whole detector's or segmentor's
    `backbone.*` (the rest is named in one log line)."""
    if not any(k.startswith(DENSE_PARTS) for k in state):
        return state
    others = [k for k in state if not k.startswith("backbone.")]
    logging.getLogger("models").info("%s: a whole detector/segmentor; the backbone leaves out %d keys: %s", path,
                                     len(others), _summary(others))
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def _bare(state: dict) -> dict:
    """Detection/segmentation checkpoints hold the backbone under `backbone.`; the filters see bare keys."""
    return {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}


def _filtered(raw: dict, name: str, model: nn.Module, path: str | Path) -> dict:
    filt = _FILTERS.get(name)
    try:
        return filt(raw, model) if filt is not None else raw
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: {e.args[0] if e.args else e}") from None


def convert(name: str, state: dict, model: nn.Module, path: str | Path) -> dict:
    """A checkpoint's keys in `model`'s layout through its family's filter."""
    return _filtered(_bare(state), name, model, path)


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    raw = _bare(backbone_keys(read_checkpoint(path), path))
    state = _filtered(raw, name, model, path)
    filt = _FILTERS.get(name)
    # Unexpected keys are reported as the file names them (where a key maps one-to-one); keys the filter leaves
    # out (a dense model's classifier head, cls token, ...) are named in one log line.
    origin, dropped = {}, []
    if filt is not None:
        for key, value in raw.items():
            try:
                mapped = filt({key: value}, model)
            except (KeyError, ValueError):  # keys that only convert together (e.g. q/k/v -> qkv)
                continue
            if len(mapped) == 1:
                origin[next(iter(mapped))] = key
            elif not mapped:
                dropped.append(key)
    if dropped:
        logging.getLogger("models").info("%s: %s leaves out %d checkpoint keys: %s", path, name, len(dropped),
                                         _summary(dropped))
    expected = model.state_dict()
    # Layers a mode adds on top of the checkpoint's network (e.g. a dense model's output norms) may be absent:
    # they keep their init, as fine-tuning from ImageNet weights does.
    new_layers = tuple(getattr(model, "new_layers", ()))
    for key, value in expected.items():
        if key.startswith(new_layers) and key not in state:
            state[key] = value
    looks = looks_like(raw)
    hint = f"; it looks like a {looks} checkpoint" if looks and looks != family(name) else ""
    load_strict(model, state, path, f"does not match {name}", origin, hint)


def load_strict(model: nn.Module, state: dict, path, mismatch: str, origin: dict | None = None,
                hint: str = "") -> None:
    """Load `state` only if it has every key of `model`, no other, and the same shapes; else one CheckpointError
    line (`mismatch` says what does not match; `origin` names unexpected keys as the file has them)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted((origin or {}).get(k, k) for k in set(state) - set(expected))
    if missing or unexpected:
        logging.getLogger("models").debug("%s: %s: missing keys %s; unexpected keys %s", path, mismatch, missing,
                                          unexpected)
        raise CheckpointError(f"{path}: {mismatch}: missing keys {_first(missing)}; unexpected keys "
                              f"{_first(unexpected)}{hint}")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch ({mismatch}): {'; '.join(bad[:5])}")
    model.load_state_dict(state)


# Keys (as the loader sees them, one leading `backbone.` stripped) that mark a family's checkpoints, official
# layouts and this project's; the first family with a marking key is the one a file looks like (BoTNet before the
# plain ResNets, whose keys BoTNet checkpoints share).
SIGNATURES = {family: re.compile(pattern) for family, pattern in {
    "pvt": r"patch_embed1\.|pos_embed1|stages\.0\.pos_embed",
    "hornet": r"downsample_layers\.",
    "lvt": r"(backbone\.)?0\.0\.|stages\.0\.blocks\.0\.attn\.attn\.",
    "patchconvnet": r"blocks_token_only\.|patch_embed\.proj\.",
    "botnet": r".*\.attn\.(qkv|pos_embed)\.|.*\.rel_pos_emb_h",
    "baselines": r"layer1\.0\.conv1\.",
}.items()}


def looks_like(keys) -> str | None:
    """The family whose checkpoint layout a set of keys has, if any."""
    return next((family for family, mark in SIGNATURES.items() if any(mark.match(k) for k in keys)), None)


def _first(keys: list[str], n: int = 5) -> str:
    """A key list as one short piece of a line: all of a short one, else the first `n` and the count."""
    if len(keys) <= n:
        return repr(keys)
    return f"[{', '.join(repr(k) for k in keys[:n])}, ... {len(keys)} in all]"


def _summary(keys: list[str]) -> str:
    """`head.* (2), cls_token`: keys grouped by their first component."""
    groups: dict[str, int] = {}
    for key in keys:
        groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
    return ", ".join(f"{g}.* ({n})" if n > 1 or g not in keys else g for g, n in groups.items())


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
