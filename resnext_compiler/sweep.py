"""Sweep file v1: a design space to train (`resnext-compile sweep`), expanded into points.

A sweep file holds a template spec (`spec:`, a spec as in a spec file, which may `extends:` one),
the axes to vary, seeds per point, the data and where to run. The axes combine as a grid:

- `cardinality: [1, 2, 4, 8]`: each C at the template's complexity, its bottleneck width d
  solved by `design.solve` (Xie et al. 2017, Sec. 3.3: the paper's Table 3 comparison);
- `values: {FIELD: [v1, v2]}`: explicit values of any spec field (`train.lr`, `stages[1].depth`);
- `sample: {count: N, ranges: {FIELD: {low, high, log, quantum}}}`: N random points drawn from
  ranges, log-uniform and quantized as pycls samples its design spaces (Radosavovic et al. 2019).

The file is read like a spec (located YAML with bounds, pydantic, every problem as
`FILE:LINE:COL: field: message`). The counts (points, seeds, epochs over all runs) are checked
against the sweep's `limits:` (`budget.SweepBudget`) before a point is built, and every point's
network against the spec budget before anything trains. Planning is pure: nothing is written.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from resnext_compiler.budget import SweepBudget, check_budget
from resnext_compiler.errors import SpecError, UserError, format_field_path
from resnext_compiler.limits import (
    MAX_CARDINALITY,
    MAX_SWEEP_EPOCHS,
    MAX_SWEEP_FIELDS,
    MAX_SWEEP_POINTS,
    MAX_SWEEP_SEEDS,
)
from resnext_compiler.named_files import SPEC, read_named_text
from resnext_compiler.naming import file_stem
from resnext_compiler.spec import (
    Spec,
    field_diagnostic,
    model_diagnostics,
    spec_from_data,
    validate_spec,
)
from resnext_compiler.yaml_source import FieldPath, SourceMap, read_yaml_file

SWEEP_VERSION = 1
SWEEP_SCHEMA_COMMENT = "# yaml-language-server: $schema=sweep.schema.json"
MAX_TIME_LIMIT_MIN = 60 * 24 * 365
_FIELD_PATH = re.compile(r"[A-Za-z_]\w*(?:\[\d{1,4}\])?(?:\.[A-Za-z_]\w*(?:\[\d{1,4}\])?)*")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class SampleRange(_Model):
    """One field's range (pycls style: uniform or log-uniform, then rounded to `quantum`).
    Integer bounds (and quantum) draw integers."""

    low: int | float = Field(description="Smallest value.")
    high: int | float = Field(description="Largest value.")
    log: bool = Field(False, description="Draw uniformly in log space (low must be > 0).")
    quantum: int | float | None = Field(
        None, gt=0, description="Round every draw to a multiple of this (pycls's *_QUANT)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> SampleRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.quantum or 1))

    def draw(self, rng: random.Random) -> int | float:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.quantum:
            value = round(value / self.quantum) * self.quantum
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.integer else float(value)


class SampleAxis(_Model):
    count: int = Field(ge=1, le=MAX_SWEEP_POINTS, description="Points to draw.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the draws (not of training).")
    ranges: dict[str, SampleRange] = Field(
        min_length=1,
        max_length=MAX_SWEEP_FIELDS,
        description="Spec field (e.g. train.lr, stages[0].depth) -> its range.",
    )


class Axes(_Model):
    """What varies; the axes combine as a grid (every value with every other)."""

    cardinality: list[Annotated[int, Field(ge=1, le=MAX_CARDINALITY)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Cardinalities C, each at the template's complexity: the bottleneck width d "
        "is solved by `resnext-compile design` (Xie et al. 2017, Sec. 3.3).",
    )
    match: Literal["params", "macs"] = Field(
        "params", description="What the cardinality axis keeps fixed (the paper: params)."
    )
    values: (
        dict[str, Annotated[list[Any], Field(min_length=1, max_length=MAX_SWEEP_POINTS)]] | None
    ) = Field(
        None,
        max_length=MAX_SWEEP_FIELDS,
        description="Spec field (e.g. train.lr, block.se_ratio) -> the values to try.",
    )
    sample: SampleAxis | None = Field(None, description="Random points drawn from ranges.")

    @field_validator("cardinality")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("cardinality lists a value twice")
        return value


class SlurmSettings(_Model):
    partition: str | None = Field(None, max_length=200, description="sbatch --partition.")
    account: str | None = Field(None, max_length=200, description="sbatch --account.")
    constraint: str | None = Field(None, max_length=200, description="sbatch --constraint.")
    cpus_per_point: int = Field(8, ge=1, le=1024, description="sbatch --cpus-per-task.")
    mem_gb: int | None = Field(None, ge=1, le=1 << 16, description="sbatch --mem, in GB.")


class RunSettings(_Model):
    """Where and how the points run (each point is one `resnext-compile train` run)."""

    executor: Literal["local", "slurm"] = Field(
        "local",
        description="local: this machine (submitit's local executor); slurm: a "
        "cluster, one array task per point.",
    )
    jobs: int = Field(1, ge=1, le=1024, description="Points at once (--jobs overrides).")
    gpus_per_point: int = Field(
        0, ge=0, le=64, description="GPUs per point (train --gpus); 0: CPU."
    )
    workers: int = Field(0, ge=0, le=64, description="Data loader workers per point.")
    time_limit_min: int = Field(
        1440, ge=1, le=MAX_TIME_LIMIT_MIN, description="Time limit of one point, in minutes."
    )
    slurm: SlurmSettings = SlurmSettings()


class SweepLimits(_Model):
    """The sweep's budget (defaults: budget.SweepBudget), checked before anything starts."""

    points: int | None = Field(
        None, ge=1, le=MAX_SWEEP_POINTS, description="Most configurations (default 64)."
    )
    seeds: int | None = Field(
        None, ge=1, le=MAX_SWEEP_SEEDS, description="Most seeds per configuration (default 10)."
    )
    epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_SWEEP_EPOCHS,
        description="Most epochs summed over every run (default 2000).",
    )


class SweepFile(_Model):
    """A design space to train: a template, axes, seeds, data and where to run."""

    sweep_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)
    spec: dict[str, Any] = Field(
        description="The template: a spec as in a spec file (`extends:` names a spec file "
        "relative to this one; other fields override it)."
    )
    axes: Axes = Axes()
    seeds: int | list[int] = Field(
        1, description="Seeds per point: a count (0, 1, ...) or a list of seeds."
    )
    data: str | None = Field(
        None,
        max_length=4096,
        description="Data folder (train --data), relative to this file; ~ is your home.",
    )
    run: RunSettings = RunSettings()
    limits: SweepLimits = SweepLimits()


@dataclass(frozen=True)
class Point:
    """One run of the sweep: a network, a seed, and what the axes chose for it."""

    key: str  # the run directory's name, stable across re-runs of the same file
    label: str
    seed: int
    spec: Spec
    axes: dict[str, Any]
    params: int
    macs: int

    @property
    def epochs(self) -> int:
        return self.spec.train.epochs

    def record(self) -> dict[str, Any]:
        """What the sweep folder's plan.json keeps of this point (for reports)."""
        stage = self.spec.resolved_stages()[0]
        return {
            "key": self.key,
            "label": self.label,
            "seed": self.seed,
            "spec": self.spec.name,
            "cardinality": stage.cardinality,
            "base_width": stage.base_width,
            "axes": self.axes,
            "params": self.params,
            "macs": self.macs,
            "epochs": self.epochs,
        }


@dataclass(frozen=True)
class SweepPlan:
    path: Path
    sweep: SweepFile
    text: str  # the file as read (copied into the sweep folder)
    points: tuple[Point, ...]
    data_dir: str | None
    budget: SweepBudget
    sampled: bool = False

    def to_json(self) -> str:
        axes = self.sweep.axes
        return json.dumps(
            {
                "sweep": self.sweep.name,
                "file": str(self.path),
                "match": axes.match if axes.cardinality else None,
                "sampled": self.sampled,
                "points": [p.record() for p in self.points],
            },
            indent=2,
        )


# --- reading -----------------------------------------------------------------------------


def load_sweep(path: str | Path) -> tuple[SweepFile, Spec, SourceMap, str]:
    """Read and validate a sweep file and its template spec. Raises SpecError, located."""
    file = Path(path)
    data, source = read_yaml_file(file)
    if not isinstance(data, dict):
        raise SpecError([field_diagnostic(
            source, "", f"a sweep file must be a YAML mapping, got {type(data).__name__}")])
    try:
        sweep = SweepFile.model_validate(data)
    except ValidationError as exc:
        raise SpecError(model_diagnostics(exc, source, SweepFile)) from None
    problems = [
        field_diagnostic(
            source, where, f"{text!r} is not a spec field path like train.lr or stages[1].depth"
        )
        for where, text in _axis_fields(sweep)
        if not _FIELD_PATH.fullmatch(text)
    ]
    if problems:
        raise SpecError(problems)
    inner = SourceMap(
        {key[1:]: loc for key, loc in source.locations.items() if key[:1] == ("spec",)},
        list(source.files),
    )
    template = spec_from_data(sweep.spec, inner, file)
    if template.preprocess is not None and isinstance(template.preprocess.labels, str):
        # class names read once, from the file the template names: point specs live elsewhere
        preprocess = template.preprocess.model_copy(update={"labels": list(template.labels or ())})
        named = template.model_copy(update={"preprocess": preprocess})
        named._source, named._labels = template._source, template._labels
        template = named
    return sweep, template, source, read_named_text(file, SPEC, None)  # bounded as above


def _axis_fields(sweep: SweepFile) -> list[tuple[FieldPath, str]]:
    axes = sweep.axes
    out: list[tuple[FieldPath, str]] = [
        (("axes", "values", name), name) for name in axes.values or {}
    ]
    if axes.sample is not None:
        out += [(("axes", "sample", "ranges", name), name) for name in axes.sample.ranges]
    return out


def parse_field_path(text: str) -> FieldPath:
    """`stages[1].depth` -> ('stages', 1, 'depth')."""
    out: list[str | int] = []
    for part in text.split("."):
        name, _, index = part.partition("[")
        out.append(name)
        if index:
            out.append(int(index.rstrip("]")))
    return tuple(out)


def seeds_of(sweep: SweepFile) -> list[int]:
    seeds = sweep.seeds
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


# --- planning ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Override:
    path: FieldPath  # in the spec
    value: Any
    where: FieldPath  # in the sweep file


@dataclass(frozen=True)
class _Cell:
    """One cell of the values x samples grid: its name parts, axis values and overrides."""

    parts: tuple[str, ...] = ()
    axes: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[_Override, ...] = ()


def plan_sweep(path: str | Path) -> SweepPlan:
    """Read a sweep file and expand it into points, every count and network checked against
    its budget first. Raises SpecError (located) or UserError. Writes nothing."""
    sweep, template, source, text = load_sweep(path)
    file = Path(path)
    budget = replace(
        SweepBudget(),
        **{name: value for name, value in sweep.limits.model_dump().items() if value is not None},
    )

    def refuse(where: FieldPath, message: str) -> SpecError:
        return SpecError([field_diagnostic(source, where, message)])

    seeds = seeds_of(sweep)
    if isinstance(sweep.seeds, int) and not 1 <= sweep.seeds <= MAX_SWEEP_SEEDS:
        raise refuse(("seeds",), f"give 1 to {MAX_SWEEP_SEEDS} seeds, got {sweep.seeds}")
    if not seeds or len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**63 for s in seeds):
        raise refuse(("seeds",), "seeds must be distinct non-negative integers")
    if len(seeds) > budget.seeds:
        raise refuse(
            ("seeds",),
            f"{len(seeds)} seeds per point, over the sweep's limit of "
            f"{budget.seeds} (raise limits.seeds)",
        )
    factors = _axis_sizes(sweep)
    configurations = math.prod(size for _, size in factors)
    if configurations > budget.points:  # counted, not built: a 100^3 grid costs nothing
        where = max(factors, key=lambda f: f[1])[0]
        sizes = " x ".join(str(size) for _, size in factors)
        raise refuse(
            where,
            f"the axes make {sizes} = {configurations:,} points, over the "
            f"sweep's limit of {budget.points} (raise limits.points)",
        )
    root = file.resolve().parent  # a labels file a variant names stays beside the sweep file
    cells = [(cell, _variant(template, cell.overrides, source, root)) for cell in _grid(sweep)]
    per_cell = len(seeds) * len(sweep.axes.cardinality or [1])
    epochs = sum(spec.train.epochs for _, spec in cells) * per_cell
    if epochs > budget.epochs:
        where = ("spec", "train", "epochs")
        if source.locations.get(where) is None:
            where = ("seeds",)
        raise refuse(
            where,
            f"{configurations:,} point(s) x {len(seeds)} seed(s) would train "
            f"{epochs:,} epochs, over the sweep's limit of {budget.epochs:,} "
            "(raise limits.epochs)",
        )
    data_dir = None
    if sweep.data is not None:
        data_dir = str((file.parent / Path(sweep.data).expanduser()).resolve())
        if not Path(data_dir).is_dir():
            raise refuse(("data",), f"data folder not found: {data_dir}")
    points: list[Point] = []
    for cell, variant in cells:
        for parts, spec, axes in _cardinalities(sweep, variant, refuse):
            cost = check_budget(spec)
            label = "-".join([*parts, *cell.parts]) or "base"
            named = spec.model_copy(update={"name": f"{template.name}-{label}"})
            named._source = spec._source
            for seed in seeds:
                points.append(
                    Point(
                        _key(label, seed, named, sweep),
                        label,
                        seed,
                        named,
                        {**axes, **cell.axes},
                        cost.params,
                        cost.macs,
                    )
                )
    return SweepPlan(
        file, sweep, text, tuple(points), data_dir, budget, sampled=sweep.axes.sample is not None
    )


def _axis_sizes(sweep: SweepFile) -> list[tuple[FieldPath, int]]:
    axes = sweep.axes
    sizes: list[tuple[FieldPath, int]] = [(("axes",), 1)]
    if axes.cardinality:
        sizes.append((("axes", "cardinality"), len(axes.cardinality)))
    sizes += [
        (("axes", "values", name), len(values)) for name, values in (axes.values or {}).items()
    ]
    if axes.sample is not None:
        sizes.append((("axes", "sample", "count"), axes.sample.count))
    return sizes


def _grid(sweep: SweepFile) -> list[_Cell]:
    """Every combination of the explicit values with every sampled point."""
    axes = sweep.axes
    columns = [
        [(name, index, value) for index, value in enumerate(values)]
        for name, values in (axes.values or {}).items()
    ]
    draws: list[list[tuple[str, Any]] | None] = [None]
    if axes.sample is not None:
        rng = random.Random(axes.sample.seed)
        draws = [
            [(name, r.draw(rng)) for name, r in axes.sample.ranges.items()]
            for _ in range(axes.sample.count)
        ]
    cells = []
    for combination in itertools.product(*columns):
        for number, drawn in enumerate(draws):
            parts = [f"{name.rsplit('.', 1)[-1]}{_short(value)}" for name, _, value in combination]
            overrides = [
                _Override(parse_field_path(name), value, ("axes", "values", name, i))
                for name, i, value in combination
            ]
            values = {name: value for name, _, value in combination}
            if drawn is not None:
                parts.append(f"sample{number:03d}")
                overrides += [
                    _Override(parse_field_path(name), value, ("axes", "sample", "ranges", name))
                    for name, value in drawn
                ]
                values.update(drawn)
            cells.append(_Cell(tuple(parts), values, tuple(overrides)))
    return cells


def _short(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
    return file_stem(text.replace('"', ""))[:24]


def _variant(template: Spec, overrides: tuple[_Override, ...], sweep_source: SourceMap,
             root: Path) -> Spec:
    """The template with `overrides` set; a problem they cause is located at the sweep file's
    value (the template's own fields keep their locations)."""
    if not overrides:
        return template
    data = template.model_dump(mode="json", exclude={"extends"}, exclude_none=True)
    source = SourceMap(dict(template.source.locations), list(template.source.files))
    problems = []
    for override in overrides:
        where = sweep_source.locate(override.where)
        message = _assign(data, override.path, copy.deepcopy(override.value))
        if message:
            problems.append(field_diagnostic(sweep_source, override.where, message))
            continue
        source.replace_under({override.path}, None)
        if where is not None:
            source.locations[override.path] = where
    if problems:
        raise SpecError(problems)
    return validate_spec(data, source, root)


def _assign(data: dict[str, Any], path: FieldPath, value: Any) -> str | None:
    """Set `path` in spec data (creating missing mappings); why it cannot be set, or None."""
    node: Any = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        here = format_field_path(path[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else 0
                return f"{here}: the template has {size} item(s) there"
        elif not isinstance(node, dict):
            return f"{format_field_path(path[:depth])} is not a mapping in the template"
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
    return None


def _cardinalities(
    sweep: SweepFile, variant: Spec, refuse: Any
) -> list[tuple[list[str], Spec, dict[str, Any]]]:
    """The variant at each cardinality of the axis, d solved at its complexity (or itself)."""
    from resnext_compiler.design import redesign, solve

    if not sweep.axes.cardinality:
        return [([], variant, {})]
    out = []
    for index, cardinality in enumerate(sweep.axes.cardinality):
        try:
            design = solve(variant, cardinality, sweep.axes.match)
        except UserError as exc:
            raise refuse(
                ("axes", "cardinality", index),
                f"cardinality {cardinality}: {str(exc).splitlines()[-1]}",
            ) from None
        width = design.base_width
        spec = redesign(variant, cardinality, width)
        spec._source = variant._source
        out.append(
            (
                [f"C{cardinality}x{width}d"],
                spec,
                {
                    "cardinality": cardinality,
                    "base_width": width,
                    f"template_{design.criterion}": design.target,
                },
            )
        )
    return out


def _key(label: str, seed: int, spec: Spec, sweep: SweepFile) -> str:
    """A run directory name that changes whenever what the run trains changes."""
    identity = json.dumps([spec.spec_hash(), seed, sweep.data, sweep.run.gpus_per_point])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"{file_stem(f'{label}-seed{seed}')[:80]}-{digest}"


def json_schema() -> dict[str, Any]:
    schema = SweepFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "resnext-compile sweep v1"
    return schema
