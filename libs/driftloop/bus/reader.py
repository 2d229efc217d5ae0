"""Reading a contract's records as plain dicts: strict validation first, the model's own only for what it refuses.

A stage that reads every record of a busy topic (features' vectors and the
offline store, deployment's scoring) spent about an eighth of its time in
``Record.parse``: pydantic's lax JSON validation of the whole model, unions
tried member by member, and a model instance built only to be read field by
field. A ``ContractReader`` validates the same fields, with the same
constraints, defaults and handling of unknown fields, into a ``TypedDict``
derived from the model, in strict mode, where a JSON value is taken as the
type it already is: that is about half the cost, and the values are the ones
the model holds (``model_dump()``).

What strict mode refuses, the model validates as before: a value lax mode
coerces (a timestamp as a number, ``"1"`` for an int) is still read, and a
record that breaks the contract is rejected with the model's own reasons,
each naming its field. So every record gets the verdict and values
``Record.parse`` gives it; a property test holds the two to that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Annotated, Any, NotRequired

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from driftloop.bus.consumer import Record
from driftloop.bus.faults import PoisonMessage
from driftloop.contracts import Contract
from driftloop.contracts.events import Features

#: Read = the records that fit, each with its fields; Rejected = the others, each with why.
Read = list[tuple[Record, dict[str, Any]]]
Rejected = list[tuple[Record, PoisonMessage]]

#: In strict mode a union takes the member a JSON value is exactly, whatever the order, so the members are
#: tried in the order feature values most often have: floats first, where the contract's order tried two
#: members before every float (a quarter of a vector's validation).
_ORDERED: dict[Any, Any] = {Features: dict[str, float | int | bool | str | None]}


class ContractReader:
    """Reads records of one contract (an ``Envelope`` or a producer contract) into dicts of its fields.

    >>> from driftloop.contracts import LabelEvent
    >>> reader = ContractReader(LabelEvent)
    >>> reader.read(Record("labels", 0, 0, None, b'{"event_id": "e-1", "label": 1}'))
    {'event_id': 'e-1', 'label': 1, 'label_time': None}
    >>> reader.read(Record("labels", 0, 1, None, b'{"event_id": "e-1", "label": "1", "lable": 0}'))
    Traceback (most recent call last):
    ...
    driftloop.bus.faults.PoisonMessage: lable: Extra inputs are not permitted
    """

    def __init__(self, model: type[Contract]) -> None:
        decorators = model.__pydantic_decorators__
        if any(getattr(decorators, kind.name) for kind in dataclasses.fields(decorators)):
            raise TypeError(f"{model.__name__} has validators or serializers a TypedDict would not run")
        self.model = model
        fields: dict[str, Any] = {}
        for name, info in model.model_fields.items():
            if info.alias is not None or info.validation_alias is not None:
                raise TypeError(f"{model.__name__}.{name} has an alias a TypedDict would not read")
            annotated: Any = Annotated[_ORDERED.get(info.annotation, info.annotation), info]
            fields[name] = annotated if info.is_required() else NotRequired[annotated]
        config = ConfigDict(
            extra=model.model_config.get("extra"), allow_inf_nan=model.model_config.get("allow_inf_nan", True)
        )
        view: Any = with_config(config)(TypedDict(model.__name__, fields))  # type: ignore[operator]
        self._strict: TypeAdapter[dict[str, Any]] = TypeAdapter(view)

    def read(self, record: Record) -> dict[str, Any]:
        """The record's fields as the model holds them; ``PoisonMessage`` naming each field that breaks it."""
        try:
            return self._strict.validate_json(record.value, strict=True)
        except ValidationError:
            return record.parse(self.model).model_dump()

    def read_all(self, records: Iterable[Record]) -> tuple[Read, Rejected]:
        """The records that fit with their fields, and those that do not with why, each in the batch's order."""
        good: Read = []
        bad: Rejected = []
        for record in records:
            try:
                good.append((record, self.read(record)))
            except PoisonMessage as exc:
                bad.append((record, exc))
        return good, bad
