"""The job-file reference (docs/job-reference.md), generated from the pydantic models.

    python -m pipeline.reference > docs/job-reference.md

It covers the job schema (pipeline/job.py) and every registered model's params (models/catalog.py);
``darkroom models NAME`` prints the same rows for one model (:func:`field_rows`). A test checks
that the committed file matches, so the reference cannot drift from the code.
"""

from __future__ import annotations

import types
import typing
from typing import NamedTuple

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from models import Registry, default_registry
from pipeline.job import Job, models_in


class FieldRow(NamedTuple):
    """One field described as plain text: ``default`` is ``required``, ``(see below)`` for a
    nested model or the value's repr; ``range`` is e.g. ``0 < x ≤ 16`` or empty."""

    name: str
    type: str
    default: str
    range: str
    description: str


def _is_list(annotation) -> bool:
    """``list[X]``, optional or not."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


def type_name(annotation) -> str:
    text = str(annotation).replace("typing.", "").replace("pipeline.job.", "").replace("models.catalog.", "")
    return text.replace("<class '", "").replace("'>", "").replace("NoneType", "null")


def default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(see below)"
    return "null" if value is None else repr(value)


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_text(field: FieldInfo) -> str:
    """The field's bounds and pattern from its pydantic constraints, e.g. ``1 ≤ x ≤ 1000``, ``≥ 0``."""
    low = high = None  # (operator, bound) as read from x's side: ("≥", "1") for ge=1
    extra = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Gt):
            low = (">", _number(item.gt))
        elif isinstance(item, annotated_types.Ge):
            low = ("≥", _number(item.ge))
        elif isinstance(item, annotated_types.Lt):
            high = ("<", _number(item.lt))
        elif isinstance(item, annotated_types.Le):
            high = ("≤", _number(item.le))
        elif isinstance(item, annotated_types.MinLen):
            extra.append(f"at least {item.min_length} item{'s' if item.min_length != 1 else ''}")
        elif getattr(item, "pattern", None):
            extra.append(f"matches {item.pattern}")
    if low and high:
        bounds = f"{low[1]} {'≤' if low[0] == '≥' else '<'} x {high[0]} {high[1]}"
    else:
        bounds = " ".join(low or high or ())
    return ", ".join(x for x in (bounds, *extra) if x)


def field_rows(model: type[BaseModel]) -> list[FieldRow]:
    """One row per field of ``model``, in declaration order."""
    return [
        FieldRow(name, type_name(f.annotation), default_text(f), range_text(f), f.description or "")
        for name, f in model.model_fields.items()
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a Markdown table cell


def _code(text: str) -> str:
    return text if text in ("required", "(see below)", "") else f"`{_cell(text)}`"


def _job_tables() -> list[str]:
    lines: list[str] = []
    queue: list[tuple[str, type[BaseModel]]] = [("", Job)]
    done: set[type[BaseModel]] = set()
    while queue:
        prefix, model = queue.pop(0)
        if model in done:
            continue
        done.add(model)
        lines += [
            f"## `{prefix or 'top level'}`",
            "",
            "| field | type | default | range | meaning |",
            "|---|---|---|---|---|",
        ]
        for row, field in zip(field_rows(model), model.model_fields.values()):
            path = f"{prefix}.{row.name}" if prefix else row.name
            lines.append(
                f"| `{path}` | {_cell(row.type)} | {_code(row.default)} | {_code(row.range)} | "
                f"{_cell(row.description)} |"
            )
            for sub in models_in(field.annotation):
                queue.append((f"{path}[]" if _is_list(field.annotation) else path, sub))
        lines.append("")
    return lines


def _params_tables(registry: Registry) -> list[str]:
    lines = [
        "## Model params",
        "",
        "What a step's `params:` (or `generate.params:`) may hold, per model; `darkroom models NAME` prints the same.",
        "",
    ]
    for entry in registry.entries():
        lines += [f"### `{entry.name}` ({entry.task})", "", entry.description, ""]
        rows = field_rows(entry.params)
        if not rows:
            lines += ["No params.", ""]
            continue
        lines += ["| param | type | default | range | meaning |", "|---|---|---|---|---|"]
        for row in rows:
            lines.append(
                f"| `{row.name}` | {_cell(row.type)} | {_code(row.default)} | {_code(row.range)} | "
                f"{_cell(row.description)} |"
            )
        lines.append("")
    return lines


def reference(registry: Registry | None = None) -> str:
    """docs/job-reference.md: the job schema's tables, then each model's params (``registry``: the default one)."""
    lines = [
        "# Job-file reference",
        "",
        "Generated from the pydantic models in `pipeline/job.py` and `models/catalog.py` by "
        "`python -m pipeline.reference`; do not edit by hand.",
        "Unknown keys are errors. `darkroom schema` prints the job schema as JSON schema.",
        "",
    ]
    lines += _job_tables()
    lines += _params_tables(registry or default_registry())
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
