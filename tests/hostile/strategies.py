"""Hypothesis strategies of hostile records for every input topic, and a deterministic draw.

JSON records are rendered by hand (:func:`render`) so that they can hold what ``json.dumps``
never writes: duplicate keys (:class:`Obj` keeps members as pairs), lone surrogates as
``\\udXXX`` escapes or raw CESU-8 bytes, ``NaN``/``Infinity`` literals and numbers of any
size (:class:`Raw`). Each topic's strategy mixes categories: unicode edge cases, wrong
types, missing and unknown fields, duplicate keys, huge numbers, nesting at the parsers'
depth limits, records at the size limits, tombstones and garbage bytes. Binary frames
(``item-features``, ``proxies``) add wrong magic, wrong header lengths, truncated and
padded bodies, broken array specs and NaN/Inf values; ``samples`` frames (typed columns,
``streams/sample_batch.py``) add wrong dtypes and column lengths, bad labels, NaN/Inf
times and ages, history padding and counts that disagree, and zero ids.

Which of the records are bad is *not* decided here: the tests ask each component's own
validator, so a record that happens to be valid must be processed, not dead-lettered.

>>> render(Obj([("a", 1), ("a", Raw("NaN"))]))
'{"a":1,"a":NaN}'
>>> len(draw(frames_for("proxies", dim=4), 3))
3
"""

from __future__ import annotations

import base64
import json
import math
import struct

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# ---------------------------------------------------------------------- rendering


class Raw(str):
    """A JSON token written as it is (``NaN``, ``1e999``, a 400-digit integer, ``"\\ud800"``)."""


class Obj(list):
    """A JSON object as (key, value) pairs, so a key may repeat."""


def render(value, ascii_only: bool = True) -> str:
    """A JSON text; ``ascii_only=False`` writes non-ASCII characters raw."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Obj):
        return (
            "{"
            + ",".join(f"{render(k, ascii_only)}:{render(v, ascii_only)}" for k, v in value)
            + "}"
        )
    if isinstance(value, dict):
        return render(Obj(value.items()), ascii_only)
    if isinstance(value, list | tuple):
        return "[" + ",".join(render(v, ascii_only) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value, ensure_ascii=ascii_only)


def to_bytes(text: str) -> bytes:
    """UTF-8, except that lone surrogates become their (invalid) 3-byte forms."""
    return text.encode("utf-8", "surrogatepass")


def draw(strategy: st.SearchStrategy, n: int) -> list:
    """``n`` examples of ``strategy``, the same ones on every run (derandomized, no
    database, generation only; duplicates possible)."""
    out: list = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example) -> None:
        out.append(example)

    collect()
    return out[:n]


# ---------------------------------------------------------------------- building blocks

EDGE_STRINGS = [
    "\u0000",  # NUL
    "a\u0000b",
    "\u202eevil\u202c",  # right-to-left override
    "\u200f\u05e9\u05dc\u05d5\u05dd",  # RTL mark + Hebrew
    "\ufeffbom",
    "\U0001f600",  # emoji
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # ZWJ family
    "e\u0301",  # combining accent
    "\U0010ffff",
    "\uffff",
    "\ud800",  # lone high surrogate
    "x\udfffy",  # lone low surrogate
    "\\",
    '"',
    " ",
    "",
    "../../etc/passwd",
    "\u0085\u2028\u2029",  # NEL, line/paragraph separators
]

edge_text = st.one_of(
    st.sampled_from(EDGE_STRINGS),
    st.text(min_size=1, max_size=12),  # includes surrogates, NUL, any code point
    st.integers(250, 260).map(lambda n: "k" * n),  # around the 256-char id limits
)

HUGE_NUMBERS = [
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1e999"),
    Raw("-1e999"),
    Raw("1" + "0" * 400),
    Raw("-" + "9" * 4300),  # past CPython's 4300-digit int limit
    Raw("1e-400"),
    Raw("-0.0"),
    Raw("0x10"),
    Raw("01"),
    Raw("+1"),
    Raw(".5"),
    2**63,
    2**63 - 1,
    -(2**63) - 1,
    2**64,
    1.7976931348623157e308,
    5e-324,
]

WRONG_VALUES = [
    None,
    True,
    False,
    [],
    {},
    "",
    "1",
    "yesterday",
    1.5,
    -1,
    0,
    [1, 2],
    {"a": 1},
    Raw('"\\ud800"'),  # lone surrogate, escaped
]

hostile_key = st.one_of(
    st.sampled_from(["", "\u0000", "\U0001f600", "colour", "schema_version ", "Title"]),
    st.integers(1, 4).map(lambda k: "K" * (10**k)),  # overlong keys, up to 10,000 chars
    st.text(max_size=8),
)

# nesting around pydantic/jiter's recursion limit (255 levels), and far beyond it
DEPTHS = [1, 64, 200, 250, 253, 254, 255, 256, 257, 260, 1000, 100_000]


def nested(depth: int, kind: str):
    """A value nested ``depth`` levels deep (arrays or objects)."""
    if kind == "array":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# ---------------------------------------------------------------------- JSON events


@st.composite
def _json_record(draw, valid: st.SearchStrategy, kind: str, size_limits: tuple[int, ...]):
    """One hostile (or occasionally valid) JSON record from a valid document."""
    doc = draw(valid)
    names = [k for k, _ in doc]
    ascii_only = draw(st.booleans())
    if kind == "unicode":  # edge-case strings in every string field (may well be valid)
        doc = Obj((k, draw(edge_text) if isinstance(v, str) else v) for k, v in doc)
    elif kind == "wrong_type":
        name = draw(st.sampled_from(names))
        wrong = draw(st.sampled_from(WRONG_VALUES))
        doc = Obj((k, wrong if k == name else v) for k, v in doc)
    elif kind == "missing":
        gone = draw(st.sets(st.sampled_from(names), min_size=1))
        doc = Obj((k, v) for k, v in doc if k not in gone)
    elif kind == "unknown":
        doc = Obj([*doc, (draw(hostile_key), draw(st.sampled_from(WRONG_VALUES + ["x"])))])
    elif kind == "duplicate":  # the same key twice: a valid and a wrong value, either order
        name = draw(st.sampled_from(names))
        value = dict(doc)[name]
        other = draw(st.sampled_from([*WRONG_VALUES, value]))
        pair = [(name, value), (name, other)]
        if draw(st.booleans()):
            pair.reverse()
        doc = Obj([*((k, v) for k, v in doc if k != name), *pair])
    elif kind == "numbers":
        name = draw(st.sampled_from(names))
        number = draw(st.sampled_from(HUGE_NUMBERS))
        doc = Obj((k, number if k == name else v) for k, v in doc)
    elif kind == "depth":
        depth = draw(st.sampled_from(DEPTHS))
        name = draw(st.sampled_from([*names, "nested"]))
        value = nested(depth, draw(st.sampled_from(["array", "object"])))
        doc = Obj([*((k, v) for k, v in doc if k != name), (name, value)])
    elif kind == "size":  # a string field padded until the record is ``size`` bytes long
        size = draw(st.sampled_from(size_limits))
        name = draw(st.sampled_from([k for k, v in doc if isinstance(v, str)] or ["pad"]))
        base = to_bytes(render(Obj((k, "" if k == name else v) for k, v in doc)))
        fill = max(0, size - len(base))
        doc = Obj((k, "x" * fill if k == name else v) for k, v in doc)
        return to_bytes(render(doc))
    return to_bytes(render(doc, ascii_only))


@st.composite
def _garbage(draw, valid: st.SearchStrategy):
    good = to_bytes(render(draw(valid)))
    return draw(
        st.sampled_from(
            [
                None,  # tombstone
                b"",
                b"null",
                b"[]",
                b'"an event"',
                b"1",
                b"\xff\xfe\x00{",
                b"\xef\xbb\xbf" + good,  # UTF-8 byte-order mark
                good + b" trailing",
                good + good,
                good[: len(good) // 2],
                good.replace(b'"', b"'"),
                b"{" * 10_000,
            ]
        )
        | st.binary(max_size=64)
    )


JSON_KINDS = (
    "unicode",
    "wrong_type",
    "missing",
    "unknown",
    "duplicate",
    "numbers",
    "depth",
)


def json_records(
    valid: st.SearchStrategy, per_kind: int, size_limits: tuple[int, ...] = (), n_size: int = 0
) -> list[bytes | None]:
    """``per_kind`` records of every kind, ``n_size`` at the size limits, and garbage."""
    records: list[bytes | None] = []
    for kind in JSON_KINDS:
        records += draw(_json_record(valid, kind, size_limits), per_kind)
    if n_size:
        records += draw(_json_record(valid, "size", size_limits), n_size)
    records += draw(_garbage(valid), per_kind)
    return records


ids = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=6)
times = st.floats(0, 2e9, allow_nan=False)


def valid_item() -> st.SearchStrategy[Obj]:
    return st.builds(
        lambda i, title, text, t: Obj(
            [("item_id", f"h{i}"), ("title", title), ("text", text), ("uploaded_at", t)]
        ),
        ids,
        st.text(min_size=1, max_size=20),
        st.text(max_size=20),
        times,
    )


def valid_click() -> st.SearchStrategy[Obj]:
    return st.builds(
        lambda u, i, label, t, ctx: Obj(
            [("user_id", f"hu{u}"), ("item_id", i), ("label", label), ("ts", t), ("context", ctx)]
        ),
        ids,
        ids,
        st.sampled_from([0, 1]),
        times,
        st.dictionaries(
            st.text(max_size=5),
            st.one_of(st.text(max_size=5), st.integers(-(2**70), 2**70), st.floats(allow_nan=True)),
            max_size=3,
        ),
    )


def valid_commit() -> st.SearchStrategy[Obj]:
    return st.builds(
        lambda v, n, t: Obj([("version", f"h-{v}"), ("expected_items", n), ("created_at", t)]),
        ids,
        st.integers(1, 5),
        times,
    )


# ---------------------------------------------------------------------- binary frames

FRAME_HEADERS = {
    "proxies": ("item_id", "proxy_version", "encoder_version", "uploaded_at", "produced_at"),
    "item-features": ("item_id", "encoder_version", "uploaded_at", "produced_at"),
}


def frame(header, arrays: list, body: bytes | None = None, magic: bytes = b"IDPF") -> bytes:
    """``magic | u32 header length | header JSON | body`` with a hand-rendered header."""
    head = to_bytes(render(Obj([("header", header), ("arrays", arrays)])))
    if body is None:
        body = b"".join(b"\0" * (4 * math.prod(s)) for _, s in arrays if _is_shape(s))
    return magic + struct.pack("<I", len(head)) + head + body


def _is_shape(shape) -> bool:
    return (
        isinstance(shape, list)
        and all(type(d) is int and 0 <= d < 10_000 for d in shape)
        and math.prod(shape) < 1_000_000
    )


def _shapes(topic: str, dim: int, hidden: int, groups: int) -> list:
    if topic == "proxies":
        return [["p_coarse", [dim]], ["p_fine", [dim]]]
    return [["z", [hidden]], ["z_groups", [groups, hidden]]]


def _body(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


@st.composite
def _frame_record(draw, topic: str, dim: int, hidden: int, groups: int, kind: str):
    n = draw(st.integers(0, 10**6))
    header = Obj(
        [
            ("item_id", f"f{n}"),
            *([("proxy_version", "h-v1")] if topic == "proxies" else []),
            ("encoder_version", "e1"),
            ("uploaded_at", 1.0),
            ("produced_at", 2.0),
        ]
    )
    arrays = _shapes(topic, dim, hidden, groups)
    width = sum(math.prod(s) for _, s in arrays)
    finite = st.floats(-4, 4, allow_nan=False, width=32)
    values = draw(st.lists(finite, min_size=width, max_size=width))
    if kind == "valid_ids":  # valid frames with edge-case ids and versions (may be valid)
        header = Obj(
            (k, draw(edge_text) if k in ("item_id", "encoder_version") else v) for k, v in header
        )
        if topic == "proxies":
            version = draw(st.sampled_from(["h-v1", "h.v2", "", "v/1", "v" * 97, "\u00e9"]))
            header = Obj((k, version if k == "proxy_version" else v) for k, v in header)
        return frame(header, arrays, _body(values))
    if kind == "nan":
        bad = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        for k in draw(st.sets(st.integers(0, width - 1), min_size=1, max_size=3)):
            values[k] = bad
        return frame(header, arrays, _body(values))
    good = frame(header, arrays, _body(values))
    if kind == "length":
        (head_len,) = struct.unpack("<I", good[4:8])
        cut = draw(st.integers(1, 9))
        return draw(
            st.sampled_from(
                [
                    good[:-cut],  # truncated body
                    good + b"\0" * cut,  # trailing bytes
                    good[:-4],  # one float short
                    good[:8],  # header length only
                    good[:7],
                    good[:4],
                    good[: 8 + head_len],  # no body at all
                    good[:4] + struct.pack("<I", head_len + cut) + good[8:],
                    good[:4] + struct.pack("<I", max(0, head_len - cut)) + good[8:],
                    good[:4] + struct.pack("<I", 0) + good[8:],
                    good[:4] + struct.pack("<I", 2**32 - 1) + good[8:],
                    good[:4] + struct.pack("<I", len(good)) + good[8:],
                ]
            )
        )
    if kind == "magic":
        return draw(st.sampled_from([b"IDPX", b"idpf", b"\0\0\0\0", b"PX\x01\x00"])) + good[4:]
    if kind == "header":  # the header object broken like a JSON event
        sub = draw(st.sampled_from(JSON_KINDS))
        raw = draw(_json_record(st.just(header), sub, ()))
        inner = Raw(raw.decode("utf-8", "surrogatepass")) if raw else Raw("null")
        head = to_bytes(render(Obj([("header", inner), ("arrays", arrays)])))
        return b"IDPF" + struct.pack("<I", len(head)) + head + _body(values)
    if kind == "arrays":
        name0, shape0 = arrays[0]
        name1, shape1 = arrays[1]
        broken = draw(
            st.sampled_from(
                [
                    [[name0, shape0]],  # an array missing
                    [[name0, shape0], [name1, shape1], ["extra", [2]]],
                    [[name0, shape0], [name0, shape1]],  # duplicate name
                    [[name0, [-1]], [name1, shape1]],
                    [[name0, [0]], [name1, shape1]],
                    [[name0, [max(1, shape0[-1] - 3)]], [name1, shape1]],  # another width
                    [[name0, [*shape0, 1]], [name1, shape1]],  # one more dimension
                    [[name0, [2**31, 2**31]], [name1, shape1]],
                    [[name0, [2**64]], [name1, shape1]],
                    [[name0, [1.5]], [name1, shape1]],
                    [[name0, ["8"]], [name1, shape1]],
                    [[name0, None], [name1, shape1]],
                    [[name0, shape0, "x"], [name1, shape1]],
                    [[name0], [name1, shape1]],
                    {"p_coarse": shape0},
                    None,
                    [],
                    nested(100_000, "array"),
                ]
            )
        )
        return frame(header, broken, _body(values))
    return draw(  # garbage
        st.sampled_from([None, b"", b"IDPF", b"IDPF\0\0\0\0", b"{}", b"null"])
        | st.binary(max_size=64)
    )


FRAME_KINDS = ("valid_ids", "nan", "length", "magic", "header", "arrays", "garbage")


def frames_for(topic: str, dim: int = 8, hidden: int = 32, groups: int = 3) -> st.SearchStrategy:
    """One strategy over every kind of hostile frame of ``topic``."""
    return st.one_of(*(_frame_record(topic, dim, hidden, groups, k) for k in FRAME_KINDS))


def frame_records(topic: str, per_kind: int, **dims) -> list[bytes | None]:
    """``per_kind`` frames of every kind (so each kind is present whatever the draw)."""
    out: list[bytes | None] = fixed_frames(topic, dims.get("dim", 8), dims.get("hidden", 32))
    for kind in FRAME_KINDS:
        out += draw(_frame_record(topic, dims.get("dim", 8), dims.get("hidden", 32),
                                  dims.get("groups", 3), kind), per_kind)  # fmt: skip
    return out


def fixed_frames(topic: str, dim: int, hidden: int) -> list[bytes]:
    """A few frames every run holds whatever hypothesis draws: headers and array lists
    nested past json's recursion limit, a missing second array, a 2-D first array."""
    header = Obj([("item_id", "fixed"), ("encoder_version", "e1"), ("uploaded_at", 1.0),
                  ("produced_at", 2.0)])  # fmt: skip
    if topic == "proxies":
        header.insert(1, ("proxy_version", "h-v1"))
        first, second = ["p_coarse", [dim]], ["p_fine", [dim]]
    else:
        first, second = ["z", [hidden]], ["z_groups", [3, hidden]]
    return [
        frame(nested(100_000, "object"), [first, second], body=b""),
        frame(header, nested(100_000, "array"), body=b""),
        frame(header, [first]),
        frame(header, [[first[0], [*first[1], 1]], second]),
        frame(header, [[first[0], [2]], second]),
    ]


# ---------------------------------------------------------------------- samples frames

SAMPLE_DTYPES = {
    "sample_key": "<i8", "user": "<i8", "item": "<i8", "label": "|i1", "ts": "<f8",
    "item_interactions": "<i4", "item_age_s": "<f4", "item_known": "|b1", "history": "<i8",
    "history_count": "|i1",
}  # fmt: skip


def sample_frame(header, columns: dict, dtypes: dict | None = None, body: bytes | None = None):
    """A samples frame from numpy ``columns`` (written in ``dtypes``, default the
    contract's) with a hand-rendered ``header``."""
    dtypes = {**SAMPLE_DTYPES, **(dtypes or {})}
    arrays, blobs = [], []
    for name, a in columns.items():
        dtype = dtypes.get(name, "<f4")
        a = np.ascontiguousarray(a, dtype=dtype)
        arrays.append([name, list(a.shape)] + ([dtype] if dtype != "<f4" else []))
        blobs.append(a.tobytes())
    head = to_bytes(render(Obj([("header", header), ("arrays", arrays)])))
    data = b"".join(blobs) if body is None else body
    return b"IDPF" + struct.pack("<I", len(head)) + head + data


def _sample_header(n: int, h: int, **changes) -> Obj:
    fields = {"kind": "samples", "schema_version": 1, "count": n, "history_len": h,
              "produced_at": 1.0, **changes}  # fmt: skip
    return Obj(fields.items())


@st.composite
def _sample_columns(draw) -> dict:
    """Valid columns of 1-4 samples with 0-4 history slots (keys in [0, 1000): repeats)."""
    n, h = draw(st.integers(1, 4)), draw(st.integers(0, 4))
    ints = st.integers(-(2**63), 2**63 - 1).filter(bool)
    counts = [draw(st.integers(0, h)) for _ in range(n)]
    history = np.zeros((n, h), np.int64)
    for k, c in enumerate(counts):
        history[k, :c] = draw(st.lists(ints, min_size=c, max_size=c))
    return {
        "sample_key": np.array(draw(st.lists(st.integers(0, 999), min_size=n, max_size=n))),
        "user": np.array(draw(st.lists(ints, min_size=n, max_size=n)), np.int64),
        "item": np.array(draw(st.lists(ints, min_size=n, max_size=n)), np.int64),
        "label": np.array(draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n))),
        "ts": np.array(draw(st.lists(times, min_size=n, max_size=n))),
        "item_interactions": np.array(
            draw(st.lists(st.integers(0, 2**31 - 1), min_size=n, max_size=n))
        ),  # fmt: skip
        "item_age_s": np.array(
            draw(st.lists(st.none() | times, min_size=n, max_size=n)), np.float64
        ),  # fmt: skip
        "item_known": np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        "history": history,
        "history_count": np.array(counts),
    }


BAD_VALUES = [
    ("ts", math.nan), ("ts", math.inf), ("ts", -math.inf),
    ("item_age_s", math.inf), ("item_age_s", -1.0), ("item_age_s", math.nan),
    ("label", 2), ("label", -1), ("label", 127),
    ("item_interactions", -1), ("user", 0), ("item", 0), ("sample_key", -5),
    ("history_count", -1), ("history_count", "h+1"), ("history_count", 127),
]  # fmt: skip


def _with_value(cols: dict, name: str, bad, k: int) -> bytes:
    """The frame of ``cols`` with sample k's ``name`` set to ``bad`` ("h+1": past H)."""
    n, h = cols["history"].shape
    cols = {
        **cols,
        name: cols[name].astype(np.float64 if name in ("ts", "item_age_s") else np.int64),
    }
    cols[name][k] = h + 1 if bad == "h+1" else bad
    return sample_frame(_sample_header(n, h), cols)


def fixed_sample_records() -> list[bytes]:
    """Every bad value of :data:`BAD_VALUES` in a frame of 3 samples (its second sample)."""
    cols = {
        "sample_key": np.array([1, 2, 3]), "user": np.array([5, 6, 5]),
        "item": np.array([7, 8, 9]), "label": np.array([0, 1, 1]),
        "ts": np.array([1.0, 2.0, 3.0]), "item_interactions": np.array([0, 4, 9]),
        "item_age_s": np.array([np.nan, 1.0, 2.0]), "item_known": np.array([True, False, True]),
        "history": np.array([[3, 0], [3, 4], [0, 0]]), "history_count": np.array([1, 2, 0]),
    }  # fmt: skip
    return [_with_value(cols, name, bad, 1) for name, bad in BAD_VALUES]


@st.composite
def _sample_record(draw, kind: str):
    cols = draw(_sample_columns())
    n, h = cols["history"].shape
    header, dtypes = _sample_header(n, h), {}
    if kind == "valid":
        return sample_frame(header, cols)
    if kind == "values":  # one column's values break the contract (NaN/Inf, labels, ...)
        name, bad = draw(st.sampled_from(BAD_VALUES))
        return _with_value(cols, name, bad, draw(st.integers(0, n - 1)))
    if kind == "padding" and h:  # a used slot that is 0, or a pad slot that is not
        k, j = draw(st.integers(0, n - 1)), draw(st.integers(0, h - 1))
        cols["history"][k, j] = 0 if j < cols["history_count"][k] else 77
        return sample_frame(header, cols)
    if kind == "dtype":  # a column in another (or an unknown) dtype
        name = draw(st.sampled_from(sorted(SAMPLE_DTYPES)))
        other = draw(st.sampled_from(["<f4", "<f8", "<i8", "<i4", "|i1", "|b1", ">i8", "<u8"]))
        if other in (">i8", "<u8"):  # not a frame dtype: written by hand
            with np.errstate(invalid="ignore"):  # NaN ages as integers: any value will do
                blob = np.ascontiguousarray(cols[name], np.dtype(other)).tobytes()
            arrays = [[c, list(np.shape(a)), other if c == name else SAMPLE_DTYPES[c]]
                      for c, a in cols.items()]  # fmt: skip
            body = b"".join(
                blob if c == name else np.ascontiguousarray(a, SAMPLE_DTYPES[c]).tobytes()
                for c, a in cols.items()
            )
            head = to_bytes(render(Obj([("header", header), ("arrays", arrays)])))
            return b"IDPF" + struct.pack("<I", len(head)) + head + body
        dtypes[name] = other
        with np.errstate(invalid="ignore", over="ignore"):
            return sample_frame(header, cols, dtypes)
    if kind == "shape":  # a column of another length or rank, one missing or one more
        name = draw(st.sampled_from(sorted(SAMPLE_DTYPES)))
        change = draw(st.sampled_from(["short", "long", "rank", "missing", "extra", "count"]))
        if change == "short":
            cols[name] = cols[name][:-1]
        elif change == "long":
            cols[name] = np.concatenate([cols[name], cols[name][:1]])
        elif change == "rank":
            cols[name] = cols[name].reshape(1, -1) if cols[name].ndim == 1 else cols[name].T
        elif change == "missing":
            del cols[name]
        elif change == "extra":
            cols["context"] = np.zeros(n)
        else:
            header = _sample_header(draw(st.sampled_from([0, n + 1, 100_001, -1])), h)
        return sample_frame(header, cols)
    if kind == "header":  # the header object broken like a JSON event
        sub = draw(st.sampled_from(JSON_KINDS))
        raw = draw(_json_record(st.just(header), sub, ()))
        inner = Raw(raw.decode("utf-8", "surrogatepass")) if raw else Raw("null")
        good = sample_frame(header, cols)
        (size,) = struct.unpack("<I", good[4:8])
        meta = json.loads(good[8 : 8 + size])
        head = to_bytes(render(Obj([("header", inner), ("arrays", meta["arrays"])])))
        return b"IDPF" + struct.pack("<I", len(head)) + head + good[8 + size :]
    good = sample_frame(header, cols)
    if kind == "length":
        (head_len,) = struct.unpack("<I", good[4:8])
        cut = draw(st.integers(1, 9))
        return draw(
            st.sampled_from(
                [
                    good[:-cut], good + b"\0" * cut, good[: 8 + head_len], good[:7],
                    good[:4] + struct.pack("<I", head_len + cut) + good[8:],
                    good[:4] + struct.pack("<I", max(0, head_len - cut)) + good[8:],
                    good[:4] + struct.pack("<I", 2**32 - 1) + good[8:],
                ]
            )
        )  # fmt: skip
    if kind == "magic":
        return draw(st.sampled_from([b"IDPX", b"idpf", b"\0\0\0\0", b'{"sa'])) + good[4:]
    return draw(  # garbage
        st.sampled_from([None, b"", b"IDPF", b"IDPF\0\0\0\0", b"{}", b"null"])
        | st.binary(max_size=64)
    )


SAMPLE_KINDS = ("valid", "values", "padding", "dtype", "shape", "header", "length", "magic",
                "garbage")  # fmt: skip


def sample_records(per_kind: int) -> list[bytes | None]:
    """``per_kind`` samples records of every kind (valid ones among them), and the
    :func:`fixed_sample_records`."""
    out: list[bytes | None] = fixed_sample_records()
    for kind in SAMPLE_KINDS:
        out += draw(_sample_record(kind), per_kind)
    return out


# ---------------------------------------------------------------------- keys


def hostile_keys(n: int) -> list[bytes | None]:
    """Record keys: none, empty, binary, long, and plain ones."""
    pool = [None, b"", b"\xff\xfe", b"\0", "\U0001f600".encode(), b"k" * 5000]
    return [pool[k % len(pool)] if k % 3 == 0 else f"h{k}".encode() for k in range(n)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
