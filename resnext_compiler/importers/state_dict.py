"""torchvision and timm state dicts (`.pth`/`.pt`/`.bin`/`.safetensors`).

torchvision's `resnet*`/`resnext*` and timm's `resnet*`, `resnext*`, `seresnext*` and
`resnext*d` models use the IR's names already (`layer1.0.conv2.weight`, `downsample.1`,
`se.fc1`, deep stem `conv1.0/.1/.3/.4/.6`, `fc`), checked in tests against the libraries.
Older SENet ports (Cadene's `pretrainedmodels`, which early timm SE-ResNeXt weights came from)
name the stem `layer0.*`, the SE module `se_module` and the classifier `last_linear`; those
names are mapped here. Reading uses `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from resnext_compiler.ir import Graph
from resnext_compiler.weights import read_weights, strip_wrapper_prefixes

# (old prefix or infix, IR spelling), applied in order.
RENAMES: tuple[tuple[str, str], ...] = (
    ("layer0.conv1.", "conv1."),
    ("layer0.bn1.", "bn1."),
    (".se_module.", ".se."),
    ("last_linear.", "fc."),
)


def rename(key: str) -> str:
    """A source key in the IR's spelling (DDP/compile prefixes dropped, SENet-port aliases)."""
    key = strip_wrapper_prefixes(key)
    for old, new in RENAMES:
        if old.endswith(".") and not old.startswith("."):
            if key.startswith(old):
                key = new + key[len(old):]
        else:
            key = key.replace(old, new)
    return key


def read_state_dict(path: Path, graph: Graph | None = None
                    ) -> tuple[Mapping[str, np.ndarray], str]:
    """(tensors keyed by IR names, a description of the format). The names are already the
    graph's (the importers' one signature passes it); a file that needs no renaming is
    returned as read, lazily."""
    del graph
    raw = read_weights(path)
    if all(rename(key) == key for key in raw):
        tensors: Mapping[str, np.ndarray] = raw
    else:
        tensors = {rename(key): np.asarray(raw[key]) for key in raw}
    kind = "safetensors state dict" if path.suffix == ".safetensors" else "PyTorch state dict"
    return tensors, kind
