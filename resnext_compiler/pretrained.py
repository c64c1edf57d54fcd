"""Pretrained ImageNet weights by name: `--weights torchvision:resnext50_32x4d`, `timm:NAME`.

`TABLE` is the one list of names: which published file each name is, and which spec of
`specs/` it fits. A name is fetched once into torch.hub's cache (`$TORCH_HOME/hub/checkpoints`,
default `~/.cache/torch/hub/checkpoints`, where torchvision and timm put the same files), and
checked against its published hash: the SHA-256 prefix in the file name (torch.hub's
`check_hash` rule) or a full SHA-256 where the table gives one. The file then goes through the
same reader as any `--weights` file (`weights.model_weights`), and the ImageNet class names
travel into the artifact's input contract. No torch and no torchvision are imported here;
reading the `.pth` itself needs the train extra (torch).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from resnext_compiler.artifacts import atomic_writer
from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import parse_labels
from resnext_compiler.named_files import WEIGHTS, open_named

if TYPE_CHECKING:
    from resnext_compiler.spec import Spec

SOURCES = ("torchvision", "timm")
MAX_DOWNLOAD_BYTES = 1 << 30  # the largest file in TABLE is 356 MB
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")  # torch.hub: NAME-<sha256 prefix>.EXT
_TORCHVISION = "https://download.pytorch.org/models/"
_TIMM_GLUON = "https://github.com/rwightman/pytorch-pretrained-gluonresnet/releases/download/v0.1/"


@dataclass(frozen=True)
class Pretrained:
    """One published weights file: its name here, the spec it fits, where it is published."""

    name: str  # "torchvision:resnext50_32x4d"
    spec: str  # specs/<spec>.yaml
    url: str
    sha256: str | None = None  # None: the prefix in the file name is the published hash
    classes: str = "imagenet_classes.txt"  # class names, a package data file

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def published_hash(self) -> str:
        if self.sha256 is not None:
            return self.sha256
        found = _HASH_IN_NAME.search(self.file_name)
        if found is None:
            raise ValueError(f"{self.name}: no hash in {self.file_name} and none in the table")
        return found.group(1)

    def class_names(self) -> tuple[str, ...]:
        return _class_names(self.classes)


def _entry(source: str, model: str, url: str, spec: str | None = None) -> Pretrained:
    return Pretrained(f"{source}:{model}", spec or model, url)


# torchvision's IMAGENET1K_V1 weights (resize 256, centre crop 224: the specs' ImageNet
# contract) and timm's Gluon ports (the same preprocessing), names as the libraries spell them.
TABLE: dict[str, Pretrained] = {
    entry.name: entry
    for entry in (
        _entry("torchvision", "resnet18", _TORCHVISION + "resnet18-f37072fd.pth"),
        _entry("torchvision", "resnet34", _TORCHVISION + "resnet34-b627a593.pth"),
        _entry("torchvision", "resnet50", _TORCHVISION + "resnet50-0676ba61.pth"),
        _entry("torchvision", "resnet101", _TORCHVISION + "resnet101-63fe2227.pth"),
        _entry("torchvision", "resnet152", _TORCHVISION + "resnet152-394f9c45.pth"),
        _entry("torchvision", "resnext50_32x4d", _TORCHVISION + "resnext50_32x4d-7cdf4587.pth"),
        _entry("torchvision", "resnext101_32x8d", _TORCHVISION + "resnext101_32x8d-8ba56ff5.pth"),
        _entry("torchvision", "resnext101_64x4d", _TORCHVISION + "resnext101_64x4d-173b62eb.pth"),
        _entry("timm", "seresnext50_32x4d", _TIMM_GLUON + "gluon_seresnext50_32x4d-90cf2d6e.pth"),
        _entry("timm", "resnext101_32x4d", _TIMM_GLUON + "gluon_resnext101_32x4d-b253c8c4.pth"),
    )
}


def is_pretrained_name(value: str | os.PathLike | None) -> bool:
    """`torchvision:NAME` or `timm:NAME` (a file path never has that form here)."""
    return value is not None and str(value).split(":", 1)[0] in SOURCES and ":" in str(value)


def lookup(name: str) -> Pretrained:
    if name not in TABLE:
        known = ", ".join(sorted(TABLE))
        raise UserError(f"unknown pretrained weights {name!r}; known names: {known}")
    return TABLE[name]


def cache_dir() -> Path:
    """torch.hub's checkpoint folder, found as torch.hub.get_dir() finds it (without torch)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def fetch(entry: Pretrained) -> Path:
    """The cached file for `entry`, downloaded and hash-checked on first use."""
    target = cache_dir() / entry.file_name
    if target.is_file():
        _check_hash(
            entry,
            _sha256_of(target),
            where=f"the cached file {target}",
            fix=f"delete it to download it again: rm {target}",
        )
        return target
    try:
        with urllib.request.urlopen(entry.url, timeout=60) as response:  # noqa: S310
            size = int(response.headers.get("Content-Length") or 0)
            if size > MAX_DOWNLOAD_BYTES:
                raise UserError(
                    f"{entry.url} is {size:,} bytes, over the "
                    f"{MAX_DOWNLOAD_BYTES:,}-byte limit for weights"
                )
            with atomic_writer(target) as handle:
                digest, copied = hashlib.sha256(), 0
                while chunk := response.read(1 << 20):
                    copied += len(chunk)
                    if copied > MAX_DOWNLOAD_BYTES:
                        raise UserError(f"{entry.url}: more than {MAX_DOWNLOAD_BYTES:,} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
                _check_hash(
                    entry,
                    digest.hexdigest(),
                    where=f"the download of {entry.url}",
                    fix="nothing was kept; try again, or fetch the file by hand",
                )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"cannot download {entry.name} ({reason}). Without network, download "
            f"{entry.url} on another machine and put it at {target} (set "
            "TORCH_HOME to use another cache folder)"
        ) from None
    return target


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open_named(path, WEIGHTS, None) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(entry: Pretrained, sha256: str, where: str, fix: str) -> None:
    if not sha256.startswith(entry.published_hash):
        raise UserError(
            f"{where} does not match the published hash of {entry.name} "
            f"(SHA-256 {sha256[:16]}..., expected {entry.published_hash}...); "
            f"refused: {fix}"
        )


@cache
def _class_names(resource: str) -> tuple[str, ...]:
    return parse_labels(resources.files("resnext_compiler").joinpath(resource).read_text())


def weights_source(value: str | os.PathLike | None) -> tuple[Path | None, Pretrained | None]:
    """A `--weights` value as a local file: a pretrained name is fetched (and its entry
    returned); a path is returned as given."""
    if value is None:
        return None, None
    if is_pretrained_name(value):
        entry = lookup(str(value))
        return fetch(entry), entry
    return Path(value), None


def with_class_names(spec: Spec, entry: Pretrained | None) -> Spec:
    """`spec` whose contract carries the pretrained weights' class names (unless the spec
    names its own classes, or has another class count, which the weights will not fit)."""
    if entry is None or spec.labels is not None:
        return spec
    names = entry.class_names()
    if spec.head.num_classes != len(names):
        return spec
    labelled = spec.model_copy()
    labelled._labels = names  # what `preprocess.labels` would have given
    return labelled
