"""The five backbone families, behind one registry: `models.create(name)`, `models.list_models()`."""

from models._registry import (CheckpointError, aliases, create, family, feature_info, list_models,  # noqa: F401
                              load_file, read_checkpoint)
from models import baselines, botnet, hornet, lvt, patchconvnet, pvt  # noqa: F401,E402  (registers each family's variants)
