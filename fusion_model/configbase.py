"""Base class for configuration objects: pydantic models that reject unknown keys."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fusion_model.errors import UserInputError

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """Configuration as data: typed, validated, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One readable line per problem: ``source: key.path: message (got value)``."""
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling or remove it"
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {where}: {msg}{shown}")
    return "; ".join(lines)


def parse_model(model: type[T], data: object, source: str) -> T:
    """Validate ``data`` as ``model``; errors become one UserInputError naming each key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserInputError(format_validation_error(err, source)) from None


def load_yaml_model(model: type[T], path: Path) -> T:
    """Read and validate a YAML file as ``model``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserInputError(f"{path}: not valid YAML: {err}") from None
    return parse_model(model, data or {}, str(path))


def known_names(values: list[str], allowed, what: str, ordered: bool = False) -> list[str]:
    """For pydantic validators: ``values`` must be a non-empty, duplicate-free subset of ``allowed``.

    With ``ordered`` the result follows ``allowed``'s order (e.g. the canonical phase order).
    """
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"unknown {what} {unknown}; choose from {list(allowed)}" if unknown
                         else f"give at least one {what}")
    if len(set(values)) != len(values):
        raise ValueError(f"a {what} is listed twice")
    return [a for a in allowed if a in values] if ordered else list(values)
