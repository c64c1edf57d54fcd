"""torchvision and timm state dicts (`.pth`/`.pt`/`.bin`/`.safetensors`).

torchvision's `resnet*`/`resnext*` and timm's `resnet*`, `resnext*`, `seresnext*` and
`resnext*d` models use the IR's names already (`layer1.0.conv2.weight`, `downsample.1`,
`se.fc1`, deep stem `conv1.0/.1/.3/.4/.6`, `fc`), checked in tests against the libraries.
Older SENet ports (Cadene's `pretrainedmodels`, which early timm SE-ResNeXt weights came from)
name the stem `layer0.*`, the SE module `se_module` and the classifier `last_linear`; those
names are mapped here. Reading uses `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from resnext_compiler.ir import Graph
from resnext_compiler.weights import read_weights, strip_wrapper_prefixes, weight_shape

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


class RenamedWeights(Mapping[str, np.ndarray]):
    """`source` keyed by IR names; as lazy as `source` (a safetensors file reads a tensor only
    when it is looked up, so names and shapes are checked before any data is read)."""

    def __init__(self, source: Mapping[str, np.ndarray]):
        self._source = source
        self._keys = {rename(key): key for key in source}
        self.fresh_arrays = getattr(source, "fresh_arrays", False)

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self._source[self._keys[name]])

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, name: str) -> tuple[int, ...]:
        return weight_shape(self._source, self._keys[name])


def read_state_dict(path: Path, graph: Graph | None = None
                    ) -> tuple[Mapping[str, np.ndarray], str]:
    """(tensors keyed by IR names, read on demand; a description of the format). `graph` is
    the importers' one signature; names are mapped by `rename` alone."""
    del graph
    tensors = RenamedWeights(read_weights(path))
    kind = "safetensors state dict" if path.suffix == ".safetensors" else "PyTorch state dict"
    return tensors, kind
