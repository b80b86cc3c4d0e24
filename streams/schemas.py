"""`idproxy schemas`: JSON Schemas of the Kafka events, generated from the pydantic models.

One file per topic or record in the top-level ``schemas/`` folder (``SCHEMA_DIR``):

| file | topic | model | mode |
|---|---|---|---|
| ``items.schema.json`` | items | ItemUploaded | validation (what is accepted) |
| ``clicks.schema.json`` | clicks | Click | validation |
| ``control.schema.json`` | control | VersionCommit | validation |
| ``models.schema.json`` | models | ModelAnnouncement | validation |
| ``dlq.schema.json`` | dlq | DeadLetter | serialization (what is written) |
| ``samples.frame-header.schema.json`` | samples | the JSON header of an IDPF frame (typed columns) |
| ``item-features.frame-header.schema.json`` | item-features | the JSON header of an IDPF frame |
| ``proxies.frame-header.schema.json`` | proxies | the JSON header of an IDPF frame |

The pydantic models stay the schema of record; these files are derived and committed so
that producers in other languages can use them. ``idproxy schemas`` rewrites them,
``idproxy schemas --check`` exits 1 and names the files that differ from the models.

>>> docs = render_schemas()
>>> docs["items.schema.json"]["$id"], docs["items.schema.json"]["required"]
('urn:idproxy:schema:items:v1', ['item_id', 'title'])
>>> clean_description("Does X.\\n\\n>>> f()\\n1\\n\\nMore ``y``:")
'Does X.\\n\\nMore `y`.'
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from idproxy.settings import Settings
from streams.sample_batch import COLUMNS as SAMPLE_COLUMNS

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
Mode = Literal["validation", "serialization"]


@dataclass(frozen=True)
class SchemaSpec:
    """One schema file: the topic, its key, the model (by name in ``module``), mode."""

    name: str
    topic: str
    key: str
    model: str
    mode: Mode
    frame_arrays: tuple[str, ...] = ()  # non-empty: the JSON header of an IDPF frame
    module: str = "streams.events"
    frame_dtypes: tuple[str, ...] = ()  # the arrays' dtypes when not all float32

    @property
    def filename(self) -> str:
        kind = "frame-header.schema.json" if self.frame_arrays else "schema.json"
        return f"{self.name}.{kind}"


SPECS: tuple[SchemaSpec, ...] = (
    SchemaSpec("items", "items", "item id (UTF-8)", "ItemUploaded", "validation"),
    SchemaSpec("clicks", "clicks", "user id (UTF-8)", "Click", "validation"),
    SchemaSpec("control", "control", "the version (UTF-8)", "VersionCommit", "validation"),
    SchemaSpec(
        "models",
        "models",
        '"bundle" or "snapshot/<variant>" (UTF-8)',
        "ModelAnnouncement",
        "validation",
    ),  # fmt: skip
    SchemaSpec(
        "dlq",
        "dlq",
        "the rejected record's key (cut to 64 KiB), or none",
        "DeadLetter",
        "serialization",
    ),  # fmt: skip
    SchemaSpec(
        "samples",
        "samples",
        "the source partition of the clicks (UTF-8)",
        "SampleBatchHeader",
        "serialization",
        tuple(SAMPLE_COLUMNS),
        "streams.sample_batch",
        tuple(SAMPLE_COLUMNS.values()),
    ),  # fmt: skip
    SchemaSpec(
        "item-features",
        "item-features",
        "item id (UTF-8)",
        "ItemFeaturesRecord",
        "serialization",
        ("z", "z_groups"),
    ),  # fmt: skip
    SchemaSpec(
        "proxies",
        "proxies",
        "<proxy version>/<item id> (UTF-8)",
        "ProxyRecordEvent",
        "serialization",
        ("p_coarse", "p_fine"),
    ),  # fmt: skip
)

_DOCTEST = re.compile(r"^\s*>>>")


def clean_description(doc: str) -> str:
    """A model docstring without its doctests (a prompt up to the next blank line), with
    ``rst`` literals as `markdown` ones; a text left ending in ':' ends in '.'."""
    kept: list[str] = []
    in_example = False
    for line in doc.strip().splitlines():
        if _DOCTEST.match(line):
            in_example = True
        elif not line.strip():
            in_example = False
        if not in_example:
            kept.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    text = text.replace("``", "`")
    return text[:-1] + "." if text.endswith(":") else text


def _clean_all(node: Any) -> None:
    """Cleans every ``description`` of a schema in place (models in ``$defs`` too)."""
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            node["description"] = clean_description(node["description"])
        for value in node.values():
            _clean_all(value)
    elif isinstance(node, list):
        for value in node:
            _clean_all(value)


def _frame_header_model(spec: SchemaSpec, record: type) -> type:
    """The pydantic model of an IDPF frame's JSON header: the record and the array list."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, create_model

    Shape = list[Annotated[int, Field(ge=0)]]
    if spec.frame_dtypes:
        names = ", ".join(
            f"{name} {dtype}"
            for name, dtype in zip(spec.frame_arrays, spec.frame_dtypes, strict=True)
        )
        what = "name, shape and dtype (left out for <f4, float32)"
        arrays_type = list[tuple[str, Shape] | tuple[str, Shape, str]]
        entry = "[name, shape] or [name, shape, dtype]"
    else:
        names = ", ".join(spec.frame_arrays)
        what, arrays_type, entry = "name and shape", list[tuple[str, Shape]], "[name, shape]"
    data = "little-endian" if spec.frame_dtypes else "little-endian float32"
    return create_model(
        f"{record.__name__}Frame",
        __base__=BaseModel,
        __config__=ConfigDict(title=f"{record.__name__}Frame"),
        __doc__=(
            f"JSON header of an IDPF binary frame on `{spec.topic}`: the record, then each "
            f"array's {what} in the order of the raw {data} data that follows the header "
            f"({names})."
        ),
        header=(record, Field(description="the record")),
        arrays=(arrays_type, Field(description=f"{entry} of each array, in payload order")),
    )


def schema_of(spec: SchemaSpec) -> dict[str, Any]:
    """The JSON Schema document of one spec, with ``$schema``, ``$id`` and Kafka notes."""
    import importlib

    record = getattr(importlib.import_module(spec.module), spec.model)
    model = _frame_header_model(spec, record) if spec.frame_arrays else record
    body = model.model_json_schema(mode=spec.mode)
    _clean_all(body)
    version = record.model_fields["schema_version"].default
    return {
        "$schema": DIALECT,
        "$id": f"urn:idproxy:schema:{spec.name}:v{version}",
        **body,
        "x-kafka-topic": spec.topic,
        "x-kafka-key": spec.key,
        "x-generated-from": f"{spec.module}.{spec.model} ({spec.mode} mode)",
    }


def render_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema document, for every spec."""
    return {spec.filename: schema_of(spec) for spec in SPECS}


def _text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def write_schemas(folder: Path | str = SCHEMA_DIR) -> list[Path]:
    """Writes every schema file into ``folder`` (created if missing); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in render_schemas().items():
        path = folder / name
        path.write_text(_text(doc))
        written.append(path)
    return written


def drifted(folder: Path | str = SCHEMA_DIR) -> list[str]:
    """Names of the schema files in ``folder`` that are missing or differ from the models,
    and of ``*.schema.json`` files there that no model generates."""
    folder = Path(folder)
    expected = {name: _text(doc) for name, doc in render_schemas().items()}
    out = [
        name
        for name, text in expected.items()
        if not (folder / name).is_file() or (folder / name).read_text() != text
    ]
    out += sorted(p.name for p in folder.glob("*.schema.json") if p.name not in expected)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and name the files that differ from the models",
    )
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="default: schemas/")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.check:
        stale = drifted(args.dir)
        for name in stale:
            print(f"drifted: {args.dir / name}")
        if stale:
            print("regenerate with `idproxy schemas`")
            return 1
        print(f"{len(SPECS)} schemas in {args.dir} match the models")
        return 0
    for path in write_schemas(args.dir):
        print(f"wrote {path}")
    return 0
