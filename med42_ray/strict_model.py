"""Base class for every config section: unknown keys are errors, assignments are validated."""

import typing
from types import UnionType

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _takes_number_not_bool(annotation) -> bool:
    """int, float, an optional one, or a Literal of numbers: a field pydantic would fill from a boolean."""
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        args = typing.get_args(annotation)
        return bool not in args and any(_takes_number_not_bool(a) for a in args)
    if typing.get_origin(annotation) is typing.Literal:
        return all(type(v) in (int, float) for v in typing.get_args(annotation))
    return annotation in (int, float)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value, info: ValidationInfo):
        # YAML reads yes/no/on/off/true/false as booleans, and pydantic takes a boolean for a number:
        # `lr: yes` would train at lr 1.0 without a word.
        if isinstance(value, bool) and _takes_number_not_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not a boolean (YAML reads yes/no/on/off/true/false as booleans)")
        return value


def require_unique(names: list[str], what: str) -> None:
    """Raise (inside a validator, so pydantic names the field) when a name repeats."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")
