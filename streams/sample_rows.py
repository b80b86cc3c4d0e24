"""The processor's sample rows: a record of ``clicks-by-item`` and the item's state ->
the row :meth:`SampleBatch.from_rows` takes, checked so that one bad record is
dead-lettered alone instead of spoiling the frame it would join."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from streams.events import Click, EventError, ItemId
from streams.sample_batch import COLUMNS, MAX_HISTORY_LEN, sample_key

SAMPLES_MAX_FRAME_BYTES = 1_000_000  # under the broker's default record limit (1 MiB)
FLOAT32_MAX = 3.4028234663852886e38
INT32_MAX = 2**31 - 1


class KeyedClick(Click):
    """A record of ``clicks-by-item``: the click, its sample id and the history before it."""

    sample_id: str = Field(
        pattern=r"^[^/]+/[0-9]+/[0-9]+$", description="<topic>/<partition>/<offset>"
    )
    history: list[ItemId] = Field(description="the user's clicked items before it, oldest first")


def sample_row(doc: KeyedClick, item_interactions: int, upload_ts: float | None) -> dict:
    """The row :meth:`SampleBatch.from_rows` takes; EventError when a column would break
    the samples contract (so that one record, not its whole frame, is dead-lettered).

    >>> doc = KeyedClick(user_id="u", item_id="7", label=1, ts=100.0,
    ...                  sample_id="clicks/2/5", history=["3"])
    >>> row = sample_row(doc, 4, upload_ts=40.0)
    >>> row["sample_key"] == 2 << 40 | 5, row["item_age_s"], row["item_known"]
    (True, 60.0, True)
    >>> sample_row(doc, 0, upload_ts=-1e39)
    Traceback (most recent call last):
    ...
    streams.events.EventError: item age 1e+39 s does not fit the float32 column
    """
    _, partition, offset = doc.sample_id.rsplit("/", 2)
    age = None if upload_ts is None else max(0.0, doc.ts - upload_ts)
    if age is not None and age > FLOAT32_MAX:
        raise EventError(f"item age {age:g} s does not fit the float32 column")
    return {
        "sample_key": sample_key(int(partition), int(offset)),
        "user": doc.user_id,
        "item": doc.item_id,
        "label": doc.label,
        "ts": doc.ts,
        "history": doc.history,
        "item_interactions": min(item_interactions, INT32_MAX),
        "item_age_s": age,
        "item_known": upload_ts is not None,
    }


def check_frame_size(batch_max: int, history_len: int) -> None:
    """Refuses settings whose full frame could not fit one Kafka record, or whose history
    does not fit the contract (at startup, not at the first full buffer).

    >>> check_frame_size(256, 20)
    >>> check_frame_size(10_000, 20)
    Traceback (most recent call last):
    ...
    ValueError: samples frames of 10000 rows of history 20: 2031000 bytes > 1000000
    """
    if not 0 <= history_len <= MAX_HISTORY_LEN:
        raise ValueError(f"trainer.history_len {history_len} is outside [0, {MAX_HISTORY_LEN}]")
    row = sum(np.dtype(d).itemsize for name, d in COLUMNS.items() if name != "history")
    size = 1000 + batch_max * (row + 8 * history_len)  # 1000: the JSON header, generously
    if size > SAMPLES_MAX_FRAME_BYTES:
        raise ValueError(  # lower processor.samples_batch_max
            f"samples frames of {batch_max} rows of history {history_len}: "
            f"{size} bytes > {SAMPLES_MAX_FRAME_BYTES}"
        )
