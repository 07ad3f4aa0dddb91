"""Forms a paused run asks people to fill in (the approval gate, the post-mortem)."""

from __future__ import annotations

from copy import copy
from typing import TypeVar

from prefect.input import RunInput
from pydantic import create_model

F = TypeVar("F", bound=RunInput)


def prefilled(form: type[F], description: str, **values: object) -> type[F]:
    """The form with `values` filled in and its markdown description. Unlike
    RunInput.with_initial_data, which replaces each field it fills and so drops the field's
    rules and help text (a required name could then be left empty), this keeps every field as
    declared and only changes its default."""
    fields = {}
    for name, value in values.items():
        info = copy(form.model_fields[name])
        info.default = value
        fields[name] = (info.annotation, info)
    model = create_model(form.__name__, __base__=form, **fields)  # type: ignore[call-overload]
    model._description = description
    return model
