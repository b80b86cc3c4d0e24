"""A compiled JSON decoder for hot-path events, derived from their pydantic models.

The online trainer decodes tens of thousands of training samples per second. Its compiled
decoder (``native/``) takes batches in TrainingSample's strict JSON form; a batch with any
other record is validated here, record by record, before it is re-encoded for it. pydantic's
``model_validate_json`` costs about 3.4 µs per ~210-byte ``TrainingSample``; a msgspec
``Struct`` decoder built from the same model's fields costs about 1 µs.

The pydantic model stays the schema of record:

* the Struct is *derived* from ``model.model_fields`` (types, defaults, ``Ge``/``Le``/length
  constraints); a model using anything the derivation does not translate (validators,
  other constraints) raises ``TypeError`` here, so the two cannot drift apart silently;
* msgspec is stricter than pydantic's lax mode (no ``"1"`` -> 1, no ``NaN`` literal), and
  whatever it rejects is handed to :func:`streams.events.parse_json`, which accepts it
  (coerced) or raises pydantic's own :class:`~streams.events.EventError` reason. So a record
  is accepted exactly when pydantic accepts it, and dead letters keep pydantic's message.

Decoded values are frozen Structs with the model's attribute names (or, for records only
pydantic accepts, the model itself); both read the same way (``sample.user_id``).

>>> from streams.events import TrainingSample
>>> decode = fast_decoder(TrainingSample)
>>> s = decode(b'{"sample_id":"c/0/1","user_id":"u1","item_id":"7","label":1,"ts":5,'
...            b'"history":["3"],"item_interactions":0,"item_known":true}')
>>> s.user_id, s.ts, s.history, s.context
('u1', 5.0, ['3'], {})
>>> decode(b'{"sample_id":"c/0/1"}')
Traceback (most recent call last):
...
streams.events.EventError: invalid TrainingSample: user_id: Field required
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Annotated, Any

import annotated_types
import msgspec
from pydantic import BaseModel

from streams.events import ModelT, parse_json

_BOUNDS = {
    annotated_types.Ge: "ge",
    annotated_types.Gt: "gt",
    annotated_types.Le: "le",
    annotated_types.Lt: "lt",
    annotated_types.MinLen: "min_length",
    annotated_types.MaxLen: "max_length",
}


def _field_type(name: str, annotation: Any, metadata: list) -> Any:
    bounds = {}
    for item in metadata:
        key = _BOUNDS.get(type(item))
        if key is None:
            raise TypeError(f"field {name!r}: constraint {item!r} has no msgspec translation")
        bounds[key] = getattr(item, key)
    return Annotated[annotation, msgspec.Meta(**bounds)] if bounds else annotation


@cache  # one Struct class per model, however many decoders are made
def struct_for(model: type[BaseModel]) -> type[msgspec.Struct]:
    """A frozen msgspec Struct with ``model``'s fields, defaults and numeric/length bounds.

    ``gc=False``: decoded JSON cannot hold reference cycles, so the Structs need no
    garbage-collector tracking (fewer collections in the trainer's hot loop).
    """
    decorators = model.__pydantic_decorators__
    if decorators.field_validators or decorators.model_validators or decorators.validators:
        raise TypeError(f"{model.__name__} has validators; decode it with parse_json")
    if model.model_config.get("extra") != "forbid":
        raise TypeError(f"{model.__name__} must forbid extra fields")
    fields = []
    for name, info in model.model_fields.items():
        kind = _field_type(name, info.annotation, info.metadata)
        if info.default_factory is not None:
            fields.append((name, kind, msgspec.field(default_factory=info.default_factory)))
        elif not info.is_required():
            fields.append((name, kind, info.default))
        else:
            fields.append((name, kind))
    return msgspec.defstruct(
        model.__name__, fields, kw_only=True, frozen=True, forbid_unknown_fields=True, gc=False
    )


def fast_decoder(model: type[ModelT]) -> Callable[[bytes | None], Any]:
    """Bytes -> decoded event (Struct, or the pydantic model on the lax path) or EventError."""
    decode = msgspec.json.Decoder(struct_for(model)).decode
    # DecodeError (incl. ValidationError), TypeError (None), ValueError (invalid UTF-8)
    errors = (msgspec.MsgspecError, TypeError, ValueError)

    def decode_event(raw: bytes | None) -> Any:
        try:
            return decode(raw)
        except errors:
            return parse_json(raw, model)

    return decode_event
