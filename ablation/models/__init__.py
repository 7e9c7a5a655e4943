"""The paper's backbones (CBAM, Tables 4 and 5), built by name with any attention of the attention registry.

``registry`` lists them (torch-free: the config reads the names from it) and builds one (``build_model``);
``resnet`` and ``mobilenet`` are the networks, with an attention slot in every block; ``config`` is the model
section of a run config; ``measure`` counts a network's params and multiply-adds on the meta device.

May import ``core`` and ``attention``. Importing it imports no torch: a network's module is imported when one is
built.
"""

from ablation.models.registry import (
    LAYOUTS,
    STEMS,
    Backbone,
    backbone,
    backbone_names,
    build_model,
    display_name,
    register_backbone,
)

__all__ = [
    "LAYOUTS",
    "STEMS",
    "Backbone",
    "backbone",
    "backbone_names",
    "build_model",
    "display_name",
    "register_backbone",
]
