"""The compiled TrainingSample decoder accepts exactly what pydantic accepts, with its reasons."""

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, field_validator

from streams.events import EventError, TrainingSample, parse_json
from streams.fast_decode import fast_decoder, struct_for

decode = fast_decoder(TrainingSample)

VALID = {
    "sample_id": "clicks/0/7",
    "user_id": "u1",
    "item_id": "i9",
    "label": 1,
    "ts": 12.5,
    "history": ["i1", "i2"],
    "item_interactions": 3,
    "item_age_s": 60.0,
    "item_known": True,
    "context": {"page": "home", "slot": 2, "score": 0.5},
}


def _fields(event) -> dict:
    if isinstance(event, BaseModel):
        return event.model_dump()
    return msgspec.structs.asdict(event)


def _outcome(raw: bytes):
    """('ok', field dict) or ('error', reason) for one decoder."""
    try:
        return "ok", _fields(decode(raw))
    except EventError as exc:
        return "error", str(exc)


def _reference(raw: bytes):
    try:
        return "ok", parse_json(raw, TrainingSample).model_dump()
    except EventError as exc:
        return "error", str(exc)


def test_valid_sample_takes_the_compiled_path_with_the_same_values():
    raw = json.dumps(VALID).encode()
    event = decode(raw)
    assert not isinstance(event, BaseModel)  # the msgspec Struct, not the pydantic fallback
    assert _fields(event) == parse_json(raw, TrainingSample).model_dump()


def test_defaults_match_the_model():
    raw = json.dumps({k: v for k, v in VALID.items() if k not in ("item_age_s", "context")})
    event = decode(raw.encode())
    assert (event.item_age_s, event.context, event.schema_version) == (None, {}, 1)


@pytest.mark.parametrize(
    "mutation",
    [
        {"label": 2},
        {"item_interactions": -1},
        {"history": "i1"},
        {"history": [1, 2]},
        {"extra": 1},
        {"schema_version": 2},
        {"context": {"k": [1]}},
        {"ts": "yesterday"},
        {"item_known": "maybe"},
    ],
)
def test_rejections_carry_pydantic_reasons(mutation):
    raw = json.dumps(VALID | mutation).encode()
    assert _outcome(raw) == _reference(raw)
    assert _outcome(raw)[0] == "error"


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"[1, 2]",
        b'{"sample_id": "a"}',
        json.dumps(VALID).encode()[:-1],
        json.dumps(VALID).encode().replace(b"u1", b"\xff"),  # invalid UTF-8
        json.dumps(VALID).encode().replace(b"u1", b"\\ud800"),  # lone surrogate escape
    ],
)
def test_malformed_bytes_raise_event_error(raw):
    assert _outcome(raw) == _reference(raw)
    with pytest.raises(EventError):
        decode(raw)


def test_lax_inputs_pydantic_accepts_are_accepted_via_the_fallback():
    """msgspec is stricter (``"5"`` is not a float); pydantic's lax mode decides."""
    raw = json.dumps(VALID | {"ts": "5", "item_interactions": 2.0}).encode()
    event = decode(raw)
    assert isinstance(event, TrainingSample)
    assert (event.ts, event.item_interactions) == (5.0, 2)


def test_duplicate_keys_resolve_like_pydantic():
    raw = json.dumps(VALID)[:-1].encode() + b', "label": 0}'
    assert _outcome(raw) == _reference(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def mutated_records(values: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """VALID as JSON with some fields dropped and some (or an extra one) set to ``values``."""
    return st.builds(
        lambda drop, replace: json.dumps(
            {k: v for k, v in VALID.items() if k not in drop} | replace
        ).encode(),
        st.sets(st.sampled_from(sorted(VALID))),
        st.dictionaries(st.sampled_from([*sorted(VALID), "extra"]), values, max_size=3),
    )


@settings(max_examples=300, deadline=None)
@given(raw=mutated_records(json_values))
def test_same_verdict_and_values_as_pydantic_on_random_mutations(raw):
    assert _outcome(raw) == _reference(raw)


def test_models_the_derivation_cannot_translate_are_refused():
    class WithValidator(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ts: float

        @field_validator("ts")
        @classmethod
        def _positive(cls, v: float) -> float:
            return v

    class WithPattern(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = Field(pattern="^a")

    class AllowsExtra(BaseModel):
        name: str

    for model in (WithValidator, WithPattern, AllowsExtra):
        with pytest.raises(TypeError):
            struct_for(model)
