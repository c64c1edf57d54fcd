"""Class folders of images (`SPLIT/<class>/<image>`), the layout torchvision's ImageFolder reads.

Torch-free: training, `evaluate MODEL.onnx` and int8 calibration all list images this way.
"""

from __future__ import annotations

from pathlib import Path

from resnext_compiler.errors import UserError
from resnext_compiler.image_transform import IMAGE_SUFFIXES
from resnext_compiler.named_files import walk_files


def scan(split_dir: Path, classes: list[str] | None = None, root: Path | None = None
         ) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) pairs under `split_dir/<class>/`; classes sorted by name unless given
    (then a folder's label is its name's position in `classes`).

    Every class folder and image is read through `named_files.walk_files`: it stays under
    `root` (the `--data` folder; `split_dir` when None), so a class folder linked to `/` is
    refused by name instead of walking the filesystem, and a FIFO named `a.png` is refused
    instead of hanging a decoder."""
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: missing; an image-folder data set needs train/ and val/ "
                        "folders with one sub-folder of images per class")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not found:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            more = ", ..." if len(classes) > 5 else ""
            raise UserError(f"{split_dir}: class folders {extra[:5]} are not among the model's "
                            f"classes ({', '.join(classes[:5])}{more})")
    index = {name: i for i, name in enumerate(classes)}
    data_root = Path(root if root is not None else split_dir)
    samples = [
        (str(path), index[name])
        for name in found
        for path in walk_files(split_dir / name, data_root, "--data", IMAGE_SUFFIXES)
    ]
    if not samples:
        raise UserError(f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class "
                        "folders")
    return samples, list(classes)


def evaluation_split(root: Path) -> Path:
    """`ROOT/val` when it exists (a training data folder), else ROOT itself."""
    return root / "val" if (root / "val").is_dir() else root
