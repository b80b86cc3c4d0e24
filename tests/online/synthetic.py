"""A small synthetic world for the trainer tests: tiny-model features, genre-driven clicks."""

from __future__ import annotations

import random
import time

import numpy as np

from proxy_model.encoder import ItemContent
from proxy_model.service import ProxyService
from streams.events import (
    ItemFeaturesRecord,
    ProxyRecordEvent,
    TrainingSample,
    VersionCommit,
    encode_frame,
    to_json,
)

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


def samples(
    n: int, n_users: int, n_items: int, seed: int = 0, start: int = 0
) -> list[TrainingSample]:
    """Clicks where user u likes genre u % 2 (p = 0.85 vs 0.15); history = earlier clicks."""
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
            TrainingSample(
                sample_id=f"samples/0/{start + k}",
                user_id=user,
                item_id=str(i),
                label=label,
                ts=1000.0 + k,
                history=hist[-20:],
                item_interactions=int(counts[i]),
                item_age_s=float(k),
                item_known=True,
            )
        )
        counts[i] += 1
        if label:
            hist.append(str(i))
    return out


def sample_messages(items: list[TrainingSample]) -> list[tuple[bytes, bytes]]:
    return [(s.user_id.encode(), to_json(s)) for s in items]
