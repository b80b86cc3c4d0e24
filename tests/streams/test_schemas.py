"""The committed JSON Schemas (schemas/) match the pydantic models, and examples agree.

The example events are validated by the pydantic models (the schema of record) and by
``jsonschema`` (a dev dependency) against the committed files, as a producer in another
language would validate them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from idproxy.cli import main
from streams import events
from streams.schemas import SCHEMA_DIR, SPECS, drifted, write_schemas

B64 = base64.b64encode(b"\x89PNG...").decode()

# schema file stem -> (valid examples, invalid examples)
EXAMPLES: dict[str, tuple[list[dict], list[dict]]] = {
    "items": (
        [
            {"item_id": "42", "title": "A film"},
            {"item_id": "43", "title": "T", "text": "more", "image_b64": B64, "uploaded_at": 5},
            {"schema_version": 1, "item_id": "44", "title": "T", "image_path": "a/b.jpg"},
        ],
        [
            {"title": "no id"},
            {"item_id": "", "title": "empty id"},
            {"item_id": "1", "title": 42},
            {"item_id": "1", "title": "T", "colour": "red"},
            {"item_id": "1", "title": "T", "schema_version": 2},
            {"item_id": "x" * 257, "title": "T"},
        ],
    ),
    "clicks": (
        [
            {"user_id": "u1", "item_id": "42", "label": 1, "ts": 1700000000.5},
            {"user_id": "u1", "item_id": "42", "label": 0, "ts": 1, "context": {"a": "x", "b": 2}},
        ],
        [
            {"user_id": "u1", "item_id": "42", "label": 7, "ts": 1.0},
            {"user_id": "u1", "item_id": "42", "label": 1},
            {"user_id": "u1", "item_id": "42", "label": 1, "ts": 1.0, "device": "tv"},
            {"user_id": "u1", "item_id": "42", "label": 1, "ts": 1.0, "context": {"a": [1]}},
        ],
    ),
    "control": (
        [{"version": "v2.0_a-b", "expected_items": 10}],
        [
            {"version": "has space", "expected_items": 1},
            {"version": "v1", "expected_items": 0},
            {"version": "v1", "expected_items": 1, "kind": "weights"},
        ],
    ),
    "dlq": (
        [
            {
                **{"source_topic": "items", "partition": 0, "offset": 7, "key_b64": None},
                **{"value_b64": B64, "reason": "bad", "component": "worker", "at": 1.0},
            }
        ],
        [{"source_topic": "items", "partition": 0, "offset": 7, "reason": "no value"}],
    ),
}


def _committed(stem: str) -> dict:
    spec = next(s for s in SPECS if s.name == stem)
    return json.loads((SCHEMA_DIR / spec.filename).read_text())


def _model(stem: str) -> type:
    return getattr(events, next(s for s in SPECS if s.name == stem).model)


def _cases(valid: bool) -> list[tuple[str, dict]]:
    return [(stem, doc) for stem, pair in EXAMPLES.items() for doc in pair[0 if valid else 1]]


def test_committed_schemas_match_the_models(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(s.filename for s in SPECS)
    for path in written:
        committed = SCHEMA_DIR / path.name
        assert committed.is_file(), f"{committed} is missing: run `idproxy schemas`"
        assert committed.read_text() == path.read_text(), (
            f"{committed} drifted from its model: run `idproxy schemas`"
        )
    assert drifted(SCHEMA_DIR) == []


def test_every_schema_names_its_topic_and_version() -> None:
    for spec in SPECS:
        doc = _committed(spec.name)
        assert doc["$id"] == f"urn:idproxy:schema:{spec.name}:v1"
        assert doc["x-kafka-topic"] == spec.topic
        assert doc["title"] and doc["description"] and ">>>" not in doc["description"]


def test_check_exits_1_and_names_the_drifted_files(tmp_path: Path, capsys) -> None:
    write_schemas(tmp_path)
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 0
    clicks = tmp_path / "clicks.schema.json"
    clicks.write_text(clicks.read_text().replace('"user_id"', '"uid"'))
    (tmp_path / "dlq.schema.json").unlink()
    (tmp_path / "old.schema.json").write_text("{}")
    capsys.readouterr()
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    named = {line.split("/")[-1] for line in out.splitlines() if line.startswith("drifted:")}
    assert named == {"clicks.schema.json", "dlq.schema.json", "old.schema.json"}
    assert main(["schemas", "--dir", str(tmp_path)]) == 0  # regenerates clicks and dlq
    assert drifted(tmp_path) == ["old.schema.json"]


@pytest.mark.parametrize("stem,doc", _cases(valid=True))
def test_valid_examples_pass_the_model_and_the_schema_fields(stem: str, doc: dict) -> None:
    schema = _committed(stem)
    events.parse_json(json.dumps(doc).encode(), _model(stem))
    assert set(schema["required"]) <= set(doc) <= set(schema["properties"])


@pytest.mark.parametrize("stem,doc", _cases(valid=False))
def test_invalid_examples_are_rejected_by_the_model(stem: str, doc: dict) -> None:
    with pytest.raises(events.EventError):
        events.parse_json(json.dumps(doc).encode(), _model(stem))


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
def test_examples_against_the_committed_schemas_with_jsonschema(valid: bool) -> None:
    import jsonschema

    for stem, doc in _cases(valid):
        validator = jsonschema.Draft202012Validator(_committed(stem))
        assert validator.is_valid(doc) is valid, (stem, doc)


def test_written_events_and_frame_headers_fit_their_schemas() -> None:
    """What the system itself writes (to_json, encode_frame) has the schemas' fields."""
    import jsonschema

    from streams.sample_batch import COLUMNS, SampleBatch

    row = dict(
        sample_key=1, user="u", item="i", label=1, ts=1.0, history=["a"],
        item_interactions=0, item_age_s=None, item_known=True,
    )  # fmt: skip
    frame = SampleBatch.from_rows([row], history_len=3).encode()
    (n,) = np.frombuffer(frame[4:8], "<u4")
    meta = json.loads(frame[8 : 8 + n])
    jsonschema.validate(meta, _committed("samples"))
    assert [entry[0] for entry in meta["arrays"]] == list(COLUMNS)
    header = events.ProxyRecordEvent(
        item_id="i", proxy_version="p1", encoder_version="e1", uploaded_at=1.0, produced_at=2.0
    )
    vec = np.zeros(4, np.float32)
    frame = events.encode_frame(header, {"p_coarse": vec, "p_fine": vec})
    (n,) = np.frombuffer(frame[4:8], "<u4")
    meta = json.loads(frame[8 : 8 + n])
    schema = _committed("proxies")
    assert set(meta) == set(schema["required"])
    assert set(meta["header"]) <= set(schema["$defs"]["ProxyRecordEvent"]["properties"])
    assert [name for name, _ in meta["arrays"]] == ["p_coarse", "p_fine"]
