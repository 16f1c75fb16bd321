"""Command-line flags derived from a settings dataclass, so each field is declared once."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def parse_settings(cls, argv=None, description: str = ""):
    """`--field-name value` for every field of dataclass `cls`; fields without a default are required."""
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
            continue
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, type=kind, required=True)
        else:
            parser.add_argument(flag, type=kind, default=f.default)
    return cls(**vars(parser.parse_args(argv)))
