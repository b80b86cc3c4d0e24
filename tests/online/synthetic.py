"""A small synthetic world for the trainer tests: tiny-model features, genre-driven clicks."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from proxy_model.encoder import ItemContent
from proxy_model.service import ProxyService
from streams.events import (
    ItemFeaturesRecord,
    ProxyRecordEvent,
    VersionCommit,
    encode_frame,
    to_json,
)
from streams.sample_batch import COLUMNS, SampleBatch, SampleBatchHeader, sample_key

GENRES = ["comedy film with jokes", "horror film with ghosts"]


def item_records(n_items: int, service: ProxyService | None = None) -> tuple[list, list, list]:
    """(item-features messages, proxies messages, control messages) as the worker makes them."""
    svc = service or ProxyService.tiny()
    texts = [f"Item {i}: a {GENRES[i % 2]}" for i in range(n_items)]
    out = svc.run([ItemContent(t) for t in texts])
    now = time.time()
    feats, proxies = [], []
    for i in range(n_items):
        item = str(i)
        fh = ItemFeaturesRecord(
            item_id=item, encoder_version=svc.encoder_version, uploaded_at=now, produced_at=now
        )
        feats.append(
            (
                item.encode(),
                encode_frame(fh, {"z": out.z[i].numpy(), "z_groups": out.z_groups[i].numpy()}),
            )
        )
        ph = ProxyRecordEvent(
            item_id=item,
            proxy_version=svc.proxy_version,
            encoder_version=svc.encoder_version,
            uploaded_at=now,
            produced_at=now,
        )
        proxies.append(
            (
                f"{svc.proxy_version}/{item}".encode(),
                encode_frame(
                    ph, {"p_coarse": out.p_coarse[i].numpy(), "p_fine": out.p_fine[i].numpy()}
                ),
            )
        )
    commit = VersionCommit(version=svc.proxy_version, expected_items=1)
    return feats, proxies, [(svc.proxy_version.encode(), to_json(commit))]


HISTORY_LEN = 20  # history slots of the frames (the trainer's default history_len)
PER_RECORD = 8  # samples per samples record (frame)


@dataclass(frozen=True)
class Sample:
    """One training sample with string ids, as the processor builds it before the frame."""

    sample_key: int
    user: str
    item: str
    label: int
    ts: float
    history: list[str]
    item_interactions: int
    item_age_s: float | None
    item_known: bool

    def but(self, **changes) -> Sample:
        return replace(self, **changes)


def samples(n: int, n_users: int, n_items: int, seed: int = 0, start: int = 0) -> list[Sample]:
    """Clicks where user u likes genre u % 2 (p = 0.85 vs 0.15); history = earlier clicks;
    sample keys = partition 0, offsets start, start + 1, ..."""
    rng = random.Random(seed)
    history: dict[str, list[str]] = {}
    counts = np.zeros(n_items, int)
    out = []
    for k in range(n):
        u = rng.randrange(n_users)
        i = rng.randrange(n_items)
        label = int(rng.random() < (0.85 if i % 2 == u % 2 else 0.15))
        user = f"u{u}"
        hist = history.setdefault(user, [])
        out.append(
            Sample(
                sample_key=sample_key(0, start + k),
                user=user,
                item=str(i),
                label=label,
                ts=1000.0 + k,
                history=hist[-HISTORY_LEN:],
                item_interactions=int(counts[i]),
                item_age_s=float(k),
                item_known=True,
            )
        )
        counts[i] += 1
        if label:
            hist.append(str(i))
    return out


def frame(items: list[Sample], history_len: int = HISTORY_LEN) -> bytes:
    """One samples record: the samples as a SampleBatch frame."""
    return SampleBatch.from_rows([asdict(s) for s in items], history_len).encode()


def sample_messages(items: list[Sample], per_record: int = PER_RECORD) -> list[tuple[bytes, bytes]]:
    """(key, value) records of ``samples``: frames of ``per_record`` consecutive samples,
    keyed by the source partition (0) as the processor keys them."""
    return [(b"0", frame(items[k : k + per_record])) for k in range(0, len(items), per_record)]


def raw_frame(items: list[Sample], **columns: np.ndarray) -> bytes:
    """A frame of the samples with some columns replaced by raw arrays of any frame dtype
    (``streams.events.FRAME_DTYPES``), and nothing validated: for malformed records."""
    batch = SampleBatch.from_rows([asdict(s) for s in items], HISTORY_LEN)
    arrays = {name: columns.get(name, getattr(batch, name)) for name in COLUMNS}
    dtypes = {name: "|b1" if a.dtype == bool else a.dtype.str for name, a in arrays.items()}
    header = SampleBatchHeader(count=len(items), history_len=HISTORY_LEN)
    return encode_frame(header, arrays, dtypes)
