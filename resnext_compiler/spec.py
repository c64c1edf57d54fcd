"""Spec v1: the YAML description of one network (see docs/design.md).

`load_spec(path)` reads a file (following `extends:`), validates it with pydantic and keeps
a source map, so every problem is reported as `FILE:LINE:COL: field.path: message`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
)

from resnext_compiler.blocks import BlockType, block_options, block_type, block_types
from resnext_compiler.dataset_types import AUGMENTS, dataset_types
from resnext_compiler.errors import (
    Diagnostic,
    Location,
    SpecError,
    format_field_path,
    parse_field_path,
    sanitise,
)
from resnext_compiler.input_contract import parse_labels
from resnext_compiler.limits import (
    MAX_BATCH,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_EXTENDS,
    MAX_IMAGE_SIDE,
    MAX_LR,
    MAX_STAGE_DEPTH,
    MAX_STAGES,
    SCHEDULES,
)
from resnext_compiler.named_files import (
    BASE_SPEC,
    LABELS,
    NamedFileError,
    contained,
    read_named_text,
)
from resnext_compiler.stems import stem_types
from resnext_compiler.yaml_source import FieldPath, SourceMap, read_yaml, read_yaml_file

# First line of every spec the tool writes (and of specs/*.yaml): editors running the YAML
# language server complete and check fields against `resnext-compile schema > spec.schema.json`.
SCHEMA_COMMENT = "# yaml-language-server: $schema=spec.schema.json"


class _Model(BaseModel):
    # allow_inf_nan=False: `.inf` and `.nan` are not numbers any field accepts
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class InputSpec(_Model):
    """Per-sample input tensor."""

    channels: int = Field(3, ge=1, le=MAX_CHANNELS, description="Input channels (3 for RGB).")
    height: int = Field(224, ge=1, le=MAX_IMAGE_SIDE)
    width: int = Field(224, ge=1, le=MAX_IMAGE_SIDE)


def _choice(names: Iterable[str]) -> Any:
    """A Literal of the registered names (the spec's allowed values come from the registry)."""
    return Literal[tuple(names)]


def _block_type_field(default: str | None) -> tuple[Any, Any]:
    described = "; ".join(bt.description for bt in block_types().values())
    choice = _choice(block_types())
    if default is None:
        return choice | None, Field(None, description=f"Block type of this stage: {described}.")
    return choice, Field(default, description=f"{described}.")


def _option_fields(per_stage: bool) -> dict[str, Any]:
    """Every block type's own options, as fields of `block:` (with their defaults) or of a
    stage (unset: the `block:` value applies)."""
    out: dict[str, Any] = {}
    for name, (option, owners) in block_options().items():
        description = f"{option.description} [{', '.join(owners)}]"
        if per_stage:
            out[name] = (option.annotation | None,
                         Field(None, description=description, **option.constraints))
        else:
            default = option.default
            factory = {"default_factory": lambda d=default: list(d)} if isinstance(
                default, list) else {"default": default}
            out[name] = (option.annotation, Field(description=description, **factory,
                                                  **option.constraints))
    return out


# Fields of the residual frame every block type shares (blocks/residual.py).
_EXPANSION = Field(None, ge=1, le=64, description="Block output = width * expansion (default: "
                   "the block type's, 4 for bottlenecks, 1 for basic blocks).")
_PREACT = "Pre-activation blocks (BN-ReLU-conv)."
_SE_RATIO = ">0 adds squeeze-excitation."

BlockSpec = create_model(
    "BlockSpec",
    __base__=_Model,
    __doc__="Defaults for every residual block; stages may override any of them.",
    type=_block_type_field("bottleneck"),
    expansion=(int | None, _EXPANSION),
    preact=(bool, Field(False, description=_PREACT)),
    se_ratio=(float, Field(0.0, ge=0, lt=1, description=_SE_RATIO)),
    zero_init_last_bn=(bool, False),
    **_option_fields(per_stage=False),
)

StageSpec = create_model(
    "StageSpec",
    __base__=_Model,
    __doc__="One stage (torchvision's `layerN`): `depth` blocks; other fields override `block`.",
    depth=(int, Field(ge=1, le=MAX_STAGE_DEPTH, description="Number of blocks.")),
    width=(int | None, Field(None, ge=1, le=MAX_CHANNELS, description="Default 64 * 2**index.")),
    stride=(int | None, Field(None, ge=1, le=64,
                              description="Default 1 for the first stage, else 2.")),
    type=_block_type_field(None),
    expansion=(int | None, _EXPANSION),
    preact=(bool | None, Field(None, description=_PREACT)),
    se_ratio=(float | None, Field(None, ge=0, lt=1, description=_SE_RATIO)),
    zero_init_last_bn=(bool | None, None),
    **_option_fields(per_stage=True),
)


class HeadSpec(_Model):
    num_classes: int = Field(1000, ge=1, le=MAX_CLASSES)
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainSpec(_Model):
    """Defaults for `resnext-compile train`; CLI flags override."""

    dataset: _choice(dataset_types()) = Field(  # type: ignore[valid-type]
        "imagenet",
        description="; ".join(f"{d.name}: {d.description}" for d in dataset_types().values()),
    )
    epochs: int = Field(100, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(256, ge=1, le=MAX_BATCH,
                            description="Global batch; lr is the rate at this batch.")
    lr: float = Field(0.1, gt=0, le=MAX_LR,
                      description="Learning rate at batch_size (scaled linearly).")
    schedule: _choice(SCHEDULES) = "step"  # type: ignore[valid-type]
    milestones: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] | None = Field(
        None,
        description="Epochs where a step schedule multiplies lr by 0.1 (default per data set).",
    )
    warmup_epochs: int = Field(0, ge=0, le=MAX_EPOCHS)
    weight_decay: float = Field(1.0e-4, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: _choice(AUGMENTS) = "auto"  # type: ignore[valid-type]


class PreprocessSpec(_Model):
    """The input contract: how an image becomes the model's input (defaults per data set).

    Evaluation transform: decode, convert to the colour mode of `input.channels` (1: grey,
    3: RGB), resize (`crop`: shorter side to size / crop_fraction, then the centre crop;
    `direct`: straight to height x width), then (pixel / scale_max - mean) / std per channel.
    """

    resize: Literal["crop", "direct"] | None = Field(
        None,
        description="crop: resize to size / crop_fraction and centre-crop; direct: resize to "
        "the input size. Default: crop for ImageNet-style folders above 64 px, else direct.",
    )
    crop_fraction: float | None = Field(
        None, gt=0, le=1, description="Centre-crop fraction of `crop` (0.875: 224 of 256)."
    )
    mean: list[float] | None = Field(
        None, description="Per-channel mean, in the units of `scale` (default per data set)."
    )
    std: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="Per-channel standard deviation, in the units of `scale`."
    )
    scale: Literal["0-1", "0-255"] = Field(
        "0-1", description="Units of mean and std: pixels scaled to 0-1, or raw 0-255."
    )
    labels: list[str] | str | None = Field(
        None,
        description="Class names in output order, or a file (relative to this spec) with one "
        "name per line; their number must equal head.num_classes.",
    )


class ReferenceSpec(_Model):
    """Published numbers for this network, for reports and evaluation."""

    top1_error: float | None = Field(None, ge=0, le=100)
    top5_error: float | None = Field(None, ge=0, le=100)
    gflops: float | None = Field(None, ge=0, le=1e9)
    source: str = ""


def _stage_shorthand(value: Any) -> Any:
    # `stages: [3, 4, 6, 3]` is shorthand for [{depth: 3}, {depth: 4}, ...].
    if isinstance(value, list):
        # Anything that is not a mapping is meant as a depth; validate it as one.
        return [item if isinstance(item, dict) else {"depth": item} for item in value]
    return value


Stages = Annotated[
    list[StageSpec],
    BeforeValidator(_stage_shorthand, json_schema_input_type=list[int | StageSpec]),
    Field(min_length=1, max_length=MAX_STAGES),
]


class Spec(_Model):
    """A ResNeXt-family network (Xie et al. 2017) plus its training defaults."""

    spec_version: Literal[1] = 1
    extends: str | None = Field(
        None,
        description="Path of a base spec (relative to this file) whose fields this one overrides.",
    )
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)
    input: InputSpec = InputSpec()
    stem: _choice(stem_types()) = Field(  # type: ignore[valid-type]
        "imagenet",
        description="; ".join(f"{s.name}: {s.description}" for s in stem_types().values()),
    )
    block: BlockSpec = BlockSpec()
    shortcut: Literal["A", "B", "C"] = "B"
    avg_down: bool = False
    stages: Stages
    head: HeadSpec = HeadSpec()
    train: TrainSpec = TrainSpec()
    preprocess: PreprocessSpec | None = None
    reference: ReferenceSpec | None = None

    _source: SourceMap = PrivateAttr(default_factory=SourceMap)
    _labels: tuple[str, ...] | None = PrivateAttr(default=None)

    @property
    def labels(self) -> tuple[str, ...] | None:
        """Class names from `preprocess.labels` (read from its file when it names one)."""
        return self._labels

    @property
    def source(self) -> SourceMap:
        return self._source

    @property
    def path(self) -> str:
        return self._source.files[0] if self._source.files else "<spec>"

    def locate(self, field_path: FieldPath) -> Location | None:
        return self._source.locate(field_path)

    def resolved_stages(self) -> list[ResolvedStage]:
        return [ResolvedStage.from_spec(self, i) for i in range(len(self.stages))]

    def spec_hash(self) -> str:
        """sha256 of the resolved spec (after `extends`), independent of formatting."""
        data = self.model_dump(mode="json", exclude={"extends"})
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_yaml(self) -> str:
        """The resolved spec as YAML (what a run directory stores)."""
        import yaml

        data = self.model_dump(mode="json", exclude={"extends"}, exclude_none=True)
        return SCHEMA_COMMENT + "\n" + yaml.safe_dump(data, sort_keys=False, width=100)


@dataclass(frozen=True)
class ResolvedStage:
    """A stage with every default filled in; `origin(field)` is where a value came from.

    `options` holds every block option (the union over block types, so a stage of any type
    reads C, d and the form); `given` names the fields the spec set for this stage (in
    `block:` or in the stage itself).
    """

    index: int
    name: str
    depth: int
    width: int
    stride: int
    type: str
    expansion: int
    preact: bool
    se_ratio: float
    zero_init_last_bn: bool
    options: Mapping[str, Any]
    overrides: frozenset[str]
    given: frozenset[str] = frozenset()

    @property
    def block_type(self) -> BlockType:
        return block_type(self.type)

    @property
    def cardinality(self) -> int:
        return self.options["cardinality"]

    @property
    def base_width(self) -> int:
        return self.options["base_width"]

    @property
    def form(self) -> str:
        return self.options["form"]

    @property
    def explicit_group_width(self) -> int | None:
        return self.options["group_width"]

    @property
    def path_width(self) -> int:
        """d, the width of one path (the block type's rule; a basic block's conv width)."""
        return self.block_type.path_width(self)

    @property
    def group_width(self) -> int:
        """Grouped 3x3 conv channels: C x d."""
        if self.explicit_group_width is not None and self.block_type.grouped:
            return self.explicit_group_width
        return self.path_width * self.cardinality

    @property
    def out_channels(self) -> int:
        return self.width * self.expansion

    def origin(self, field_name: str) -> str:
        """Spec field path that set `field_name` for this stage."""
        if field_name in self.overrides or field_name in ("depth", "width", "stride"):
            return f"stages[{self.index}].{field_name}"
        return f"block.{field_name}"

    def foreign_options(self) -> list[str]:
        """Options the spec set, away from their defaults, that this stage's block type does
        not read (`cardinality: 32` on a basic block)."""
        own = self.block_type.options
        return [name for name, (option, _) in block_options().items()
                if name not in own and name in self.given and self.options[name] != option.default]

    @classmethod
    def from_spec(cls, spec: Spec, index: int) -> ResolvedStage:
        stage = spec.stages[index]
        block = spec.block
        given = stage.model_dump(exclude_none=True)

        def pick(name: str) -> Any:
            return given[name] if name in given else getattr(block, name)

        block_type_name = pick("type")
        expansion = pick("expansion")
        if expansion is None:
            expansion = block_type(block_type_name).expansion
        return cls(
            index=index,
            name=f"layer{index + 1}",
            depth=stage.depth,
            width=stage.width if stage.width is not None else 64 * 2**index,
            stride=stage.stride if stage.stride is not None else (1 if index == 0 else 2),
            type=block_type_name,
            expansion=expansion,
            preact=pick("preact"),
            se_ratio=pick("se_ratio"),
            zero_init_last_bn=pick("zero_init_last_bn"),
            options={name: pick(name) for name in block_options()},
            overrides=frozenset(k for k in given if k not in ("depth", "width", "stride")),
            given=frozenset(given) | frozenset(block.model_fields_set),
        )


# --- loading ---------------------------------------------------------------------------


def _merge(base: Any, override: Any, path: FieldPath, replaced: set[FieldPath]) -> Any:
    """Deep-merge mappings; anything else in `override` replaces the base value (its path
    goes into `replaced`, whose locations then come from the overriding file)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base.get(key), value, path + (key,), replaced)
        return out
    replaced.add(path)
    return override


def field_diagnostic(where: Spec | SourceMap, field: str | FieldPath, message: str
                     ) -> Diagnostic:
    """`message` located at a spec field, the one way to build a problem once a file has been
    read: `field` as written (`stages[1].stride`) or as a path (`('stages', 1, 'stride')`),
    located at that field or its nearest ancestor with a location; `""` is the file's top."""
    path = parse_field_path(field) if isinstance(field, str) else tuple(field)
    return Diagnostic(message, format_field_path(path), where.locate(path))


# top-level fields a spec does not take from the one it `extends`
NOT_INHERITED = ("extends", "reference", "description")


def _resolve_extends(
    data: Any, source: SourceMap, filename: Path, chain: tuple[Path, ...], root: Path
) -> tuple[Any, SourceMap]:
    """Merge the base spec that `extends:` names (relative to `filename`, kept under `root`:
    the folder of the spec the user named) under `data`."""
    if not isinstance(data, dict) or "extends" not in data:
        return data, source
    target = data["extends"]

    def refuse(message: str, *more: Diagnostic) -> SpecError:
        return SpecError([field_diagnostic(source, "extends", message), *more])

    if not isinstance(target, str) or not target:
        raise refuse("must be a path to a base spec")
    if len(chain) >= MAX_EXTENDS:
        raise refuse(f"extends chain is longer than {MAX_EXTENDS} files")
    try:
        base_path = contained(filename.parent / target, root, kind=BASE_SPEC)
    except NamedFileError as exc:
        raise refuse(str(exc)) from None
    if not base_path.name.lower().endswith((".yaml", ".yml")):
        # only a spec is ever parsed: the lines of any other file must not reach a message
        raise refuse(f"{target!r} is not a spec (a .yaml or .yml file)")
    if base_path in chain:
        cycle = " -> ".join(sanitise(str(p)) for p in (*chain, base_path))
        raise refuse(f"circular extends: {cycle}")
    try:
        base_data, base_source = read_yaml_file(base_path, BASE_SPEC, root)
    except SpecError as exc:
        # say which line of this file led there, then the base file's own problems
        raise refuse(f"in base spec {sanitise(str(base_path))}:", *exc.diagnostics) from None
    base_data, base_source = _resolve_extends(
        base_data, base_source, base_path, (*chain, base_path), root
    )
    if not isinstance(base_data, dict):
        raise refuse("base spec is not a YAML mapping")
    merged_source = SourceMap(dict(base_source.locations), source.files + base_source.files)
    override = {k: v for k, v in data.items() if k != "extends"}
    # a child is another network: the parent's published numbers and prose are not its own
    base_data = {k: v for k, v in base_data.items() if k not in NOT_INHERITED}
    replaced: set[FieldPath] = set()
    merged = _merge(base_data, override, (), replaced)
    merged_source.replace_under(replaced, source)
    # Locations of mappings the override only extended, and of the top level, come from the
    # file the user named.
    for key, loc in source.locations.items():
        merged_source.locations.setdefault(key, loc)
    merged_source.locations[()] = source.locations[()]
    merged_source.locations[("extends",)] = source.locations.get(("extends",))
    return merged, merged_source


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Allowed keys of the model found at `loc` (for 'did you mean')."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def model_diagnostics(exc: ValidationError, source: SourceMap,
                      model: type[BaseModel]) -> list[Diagnostic]:
    """Located problems of a document that pydantic `model` refused, in file order: unknown
    fields with 'did you mean', missing ones, wrong values with what was given."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # Drop pydantic's union-branch markers such as 'int' or 'StageSpec'.
        clean = tuple(p for p in loc if isinstance(p, int) or not _is_branch_tag(p))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            key = clean[-1]
            allowed = _field_names(model, clean[:-1])
            message = f"unknown field {key!r}"
            close = difflib.get_close_matches(str(key), allowed, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            elif allowed:
                message += f" (allowed: {', '.join(allowed)})"
        elif err["type"] == "missing":
            message = "required field is missing"
        elif "input" in err and err["type"] not in ("missing",):
            message += f" (got {err['input']!r})" if _short(err["input"]) else ""
        out.append(field_diagnostic(source, clean, message))
    return sorted(out, key=_position)


def _position(diagnostic: Diagnostic) -> tuple[str, int, int]:
    loc = diagnostic.location
    return ("", 0, 0) if loc is None else (loc.file, loc.line, loc.column)


def _is_branch_tag(part: str) -> bool:
    return part in ("int", "float", "str", "bool", "StageSpec",
                    "function-before[_stage_shorthand(), list[StageSpec]]") or (
        part.startswith(("function-", "literal[", "list[", "dict[", "json-or-python["))
    )


def _short(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 60


def _validate(data: Any, source: SourceMap, root: Path) -> Spec:
    if not isinstance(data, dict):
        raise SpecError([field_diagnostic(
            source, "", f"a spec must be a YAML mapping, got {type(data).__name__}")])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(model_diagnostics(exc, source, Spec)) from None
    spec._source = source
    spec._labels, problems = _preprocess_problems(spec, root)
    if problems:
        raise SpecError(problems)
    return spec


def _preprocess_problems(spec: Spec, root: Path
                         ) -> tuple[tuple[str, ...] | None, list[Diagnostic]]:
    """Class names, and what in `preprocess:` contradicts the rest of the spec."""
    pre = spec.preprocess
    if pre is None:
        return None, []
    problems = []

    def problem(field: str, message: str) -> None:
        problems.append(field_diagnostic(spec, ("preprocess", field), message))

    channels = spec.input.channels
    for field in ("mean", "std"):
        values = getattr(pre, field)
        if values is not None and len(values) != channels:
            problem(field, f"{len(values)} value(s) for an input of {channels} channel(s); "
                    f"give one per channel")
    labels = None
    if isinstance(pre.labels, str):
        labels, message = _read_labels_file(spec, pre.labels, root)
        if message:
            problem("labels", message)
    elif pre.labels is not None:
        labels = tuple(pre.labels)
    if labels is not None and len(labels) != spec.head.num_classes:
        where = f" in {pre.labels}" if isinstance(pre.labels, str) else ""
        problem("labels", f"{len(labels)} class name(s){where} but head.num_classes is "
                f"{spec.head.num_classes}")
    if labels is not None and any(not name.strip() or "\n" in name for name in labels):
        problem("labels", "class names must be non-empty single lines")
    return labels, sorted(problems, key=_position)


def _read_labels_file(spec: Spec, name: str, root: Path
                      ) -> tuple[tuple[str, ...] | None, str]:
    """(names, problem) for a labels file named relative to the spec that names it."""
    location = spec.locate(("preprocess", "labels"))
    base = Path(location.file).parent if location is not None else Path(spec.path).parent
    try:
        return parse_labels(read_named_text(base / name, LABELS, root)), ""
    except NamedFileError as exc:
        return None, str(exc)


def load_spec(path: str | Path) -> Spec:
    """Read, resolve `extends`, and validate a spec file. Raises SpecError."""
    file = Path(path)
    data, source = read_yaml_file(file)
    root = file.resolve().parent  # `extends` parents and labels files stay under it
    data, source = _resolve_extends(data, source, file, (file.resolve(),), root)
    return _validate(data, source, root)


def parse_spec(text: str, filename: str = "<string>", base_dir: str | Path = ".") -> Spec:
    """Like `load_spec`, from text; `extends` paths are relative to `base_dir`."""
    data, source = read_yaml(text, filename)
    root = Path(base_dir).resolve()
    data, source = _resolve_extends(data, source, Path(base_dir) / filename, (), root)
    return _validate(data, source, root)


def spec_from_data(data: Any, source: SourceMap, filename: Path) -> Spec:
    """A spec held inside another YAML document (a sweep file's `spec:`): `extends` is
    resolved relative to `filename`, and problems are located by `source`."""
    root = filename.resolve().parent  # as for a spec file: parents and labels stay under it
    data, source = _resolve_extends(data, source, filename, (filename.resolve(),), root)
    return _validate(data, source, root)


def validate_spec(data: Any, source: SourceMap, root: Path) -> Spec:
    """Validate spec data (no `extends` left) whose locations `source` holds; a labels file
    it names is read under `root`. Raises SpecError."""
    return _validate(data, source, root)


def json_schema() -> dict[str, Any]:
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "resnext-compile spec v1"
    return schema


def with_form(spec: Spec, form: str) -> Spec:
    """The same network with every block in form `form` (A, B or C); keeps the source map."""
    block = spec.block.model_copy(update={"form": form})
    stages = [stage.model_copy(update={"form": None}) for stage in spec.stages]
    rewritten = spec.model_copy(update={"block": block, "stages": stages})
    rewritten._source = spec._source
    return rewritten
