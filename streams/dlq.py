"""The dead-letter sink: every rejected input is kept with its origin and the reason."""

from __future__ import annotations

import base64
import logging

from streams.events import DeadLetter, to_json

log = logging.getLogger(__name__)

# The dlq topic's ``max.message.bytes`` and the kafka-python producers' ``max_request_size``.
# A dead letter carries the original record in base64 (4/3 of its size), so a record at the
# broker's default limit (1 MiB) gives a letter of ~1.4 MB: with the default limits such a
# letter was refused by the producer and the record was lost after its offset was committed.
DLQ_MAX_BYTES = 16 << 20
LETTER_MAX_KEY = 64 << 10  # bytes of the original key kept in a letter
LETTER_MAX_VALUE = 8 << 20  # bytes of the original value kept (the worker's own limit)


def letter_record(message, reason: str, component: str) -> tuple[bytes | None, bytes]:
    """(Kafka key, DeadLetter JSON) of ``message`` (anything with topic, partition, offset,
    key, value). The original key and value are kept whole up to ``LETTER_MAX_KEY`` and
    ``LETTER_MAX_VALUE`` bytes, so every letter fits ``DLQ_MAX_BYTES``; a longer one is cut
    and the reason says so.

    >>> from types import SimpleNamespace as R
    >>> key, raw = letter_record(R(topic="t", partition=0, offset=7, key=None, value=b"x"), "bad", "c")
    >>> DeadLetter.model_validate_json(raw).value_b64, key
    (b'x', None)
    """
    key, value = message.key, message.value or b""
    cut = []
    if len(value) > LETTER_MAX_VALUE:
        cut.append(f"value of {len(value)} bytes cut to {LETTER_MAX_VALUE}")
        value = value[:LETTER_MAX_VALUE]
    if key is not None and len(key) > LETTER_MAX_KEY:
        cut.append(f"key of {len(key)} bytes cut to {LETTER_MAX_KEY}")
        key = key[:LETTER_MAX_KEY]
    reason = reason[:2000] + (f" [{'; '.join(cut)} in this letter]" if cut else "")
    letter = DeadLetter(
        source_topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key_b64=base64.b64encode(key) if key is not None else None,
        value_b64=base64.b64encode(value),
        reason=reason,
        component=component,
    )
    return key, to_json(letter)


def failure_reason(exc: BaseException) -> str:
    """The dead-letter reason of an unexpected failure: the exception's type and message.

    >>> failure_reason(ZeroDivisionError("division by zero"))
    'ZeroDivisionError: division by zero'
    """
    return f"{type(exc).__name__}: {exc}"


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for failures that are not about the record being handled: the broker (Kafka
    client errors), the disk or the network (``OSError``, ``StoreIOError``). The consumer
    stops or backs off on these instead of dead-lettering the record.

    >>> is_infrastructure_error(ValueError("bad record")), is_infrastructure_error(OSError(28, "full"))
    (False, True)
    """
    from kafka.errors import KafkaError

    from store.errors import StoreIOError

    kinds: tuple[type[BaseException], ...] = (KafkaError, OSError, StoreIOError)
    try:
        from aiokafka.errors import KafkaError as AioKafkaError

        kinds += (AioKafkaError,)
    except ImportError:  # pragma: no cover - aiokafka comes with faust
        pass
    return isinstance(exc, kinds)


class DeadLetterSink:
    """Sends DeadLetter records to the dlq topic; never raises into the caller's loop.

    The caller flushes the producer before it commits the source offsets, so a rejected
    input is either in the DLQ or will be read (and rejected) again: never lost.
    """

    def __init__(self, producer, topic: str, component: str) -> None:
        self.producer = producer
        self.topic = topic
        self.component = component
        self.count = 0

    def send(self, message, reason: str) -> None:
        """``message``: a kafka-python ConsumerRecord (topic, partition, offset, key, value)."""
        try:
            key, letter = letter_record(message, reason, self.component)
            self.producer.send(self.topic, key=key, value=letter)
            self.count += 1
            log.warning(
                "dead letter %s/%d/%d: %s", message.topic, message.partition, message.offset, reason
            )
        except Exception:  # the producer's own errors surface at flush(), before the commit
            log.exception(
                "could not queue dead letter for %s/%d/%d",
                message.topic,
                message.partition,
                message.offset,
            )
