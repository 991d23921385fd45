"""Base class for every config section: unknown keys are errors, assignments are validated."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def require_unique(names: list[str], what: str) -> None:
    """Raise (inside a validator, so pydantic names the field) when a name repeats."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")
