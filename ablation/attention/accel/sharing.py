"""Accelerated modules are made from the reference ones, never rebuilt: the same parameters, buffers and children.

So an accelerated network has the very state_dict keys and Parameter objects of the network it was made from: an
optimizer, a checkpoint or a loaded state_dict sees no difference, and the reference module stays as it was.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def adopt(cls: type[M], reference: nn.Module, **children: nn.Module | None) -> M:
    """A new ``cls`` (a subclass of the reference's class, or one that reads the same attributes) holding
    ``reference``'s attributes, parameters, buffers and children (the same objects), with ``children`` put in
    place of the ones of those names. The reference module itself is left unchanged."""
    module = cls.__new__(cls)
    # nn.Module keeps parameters, buffers and children in three dicts: new dicts, so that replacing a child here
    # leaves the reference's alone; the tensors and modules in them are shared.
    state = vars(reference) | {
        "_parameters": dict(reference._parameters),
        "_buffers": dict(reference._buffers),
        "_modules": dict(reference._modules),
    }
    module.__dict__.update(state)
    for name, child in children.items():
        setattr(module, name, child)
    return module
