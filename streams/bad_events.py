"""Malformed variants of valid events, for bad-input floods (`publish movielens --bad-share`).

Each variant breaks one rule the consumers enforce, so every one must end in the DLQ with
a reason and none may disturb the valid traffic around it.

>>> import json, random
>>> raw = malformed("clicks", {"user_id": "1", "item_id": "2", "label": 1, "ts": 5.0}, random.Random(0))
>>> raw[:1] == b"{" or raw.startswith(b"not json")
True
"""

from __future__ import annotations

import base64
import json
import random

# topic kind -> ways to break one of its events (each takes the valid event as a dict)
_BREAKERS = {
    "items": (
        lambda e, r: b"not json {" + str(r.random()).encode(),
        lambda e, r: _dump({**e, "title": 42}),  # wrong type
        lambda e, r: _dump({**e, "colour": "red"}),  # unknown field
        lambda e, r: _dump({**e, "schema_version": 99}),
        lambda e, r: _dump({**e, "text": "x" * 50_000}),  # over the text limit
        lambda e, r: _dump({**e, "image_b64": base64.b64encode(r.randbytes(256)).decode()}),
    ),
    "clicks": (
        lambda e, r: b"not json {" + str(r.random()).encode(),
        lambda e, r: _dump({**e, "label": 7}),  # out of range
        lambda e, r: _dump({**e, "ts": "yesterday"}),  # wrong type
        lambda e, r: _dump({**e, "device": "tv"}),  # unknown field
        lambda e, r: _dump({**e, "schema_version": 99}),
    ),
}


def _dump(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def malformed(kind: str, event: dict, rng: random.Random) -> bytes:
    """One malformed message for topic ``kind`` ("items" or "clicks"), built from ``event``."""
    breakers = _BREAKERS[kind]
    return breakers[rng.randrange(len(breakers))](event, rng)
