"""The job-file reference (docs/job-reference.md), generated from the pydantic models.

    python -m pipeline.reference > docs/job-reference.md

A test checks that the committed file matches, so the reference cannot drift from the code.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.job import Job


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _is_list(annotation) -> bool:
    """``list[X]``, optional or not."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


def _type_name(annotation) -> str:
    text = str(annotation).replace("typing.", "").replace("pipeline.job.", "")
    text = text.replace("<class '", "").replace("'>", "").replace("NoneType", "null")
    return text.replace("|", "\\|")  # a Markdown table cell


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "see below" if isinstance(value, BaseModel) else f"`{value!r}`"
    return f"`{field.default!r}`" if field.default is not None else "`null`"


def reference() -> str:
    lines = [
        "# Job-file reference",
        "",
        "Generated from the pydantic models in `pipeline/job.py` by `python -m pipeline.reference`; do not edit by "
        "hand.",
        "Unknown keys are errors. `darkroom schema` prints the same as JSON schema.",
        "",
    ]
    queue: list[tuple[str, type[BaseModel]]] = [("", Job)]
    done: set[type[BaseModel]] = set()
    while queue:
        prefix, model = queue.pop(0)
        if model in done:
            continue
        done.add(model)
        lines += [f"## `{prefix or 'top level'}`", "", "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            path = f"{prefix}.{name}" if prefix else name
            meaning = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{path}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} |")
            for sub in _models_in(field.annotation):
                queue.append((f"{path}[]" if _is_list(field.annotation) else path, sub))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
