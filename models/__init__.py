"""The five backbone families, behind one registry: `models.create(name)`, `models.list_models()`."""

from models._registry import CheckpointError, create, family, list_models, read_checkpoint  # noqa: F401
from models import baselines, botnet, hornet, lvt, patchconvnet, pvt  # noqa: F401,E402  (registers each family's variants)
