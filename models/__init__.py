"""The five backbone families, behind one registry: `models.create(name)`, `models.list_models()`."""

from models._registry import (CheckpointError, aliases, convert, create, family, feature_info,  # noqa: F401
                              list_models, load_file, read_checkpoint)
# Importing each family registers its variants.
from models import baselines, botnet, hornet, lvt, patchconvnet, pvt  # noqa: F401,E402
