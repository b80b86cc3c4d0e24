"""The dead-letter sink: every rejected input is kept with its origin and the reason."""

from __future__ import annotations

import base64
import logging

from streams.events import DeadLetter, to_json

log = logging.getLogger(__name__)


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
            letter = DeadLetter(
                source_topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key_b64=base64.b64encode(message.key) if message.key is not None else None,
                value_b64=base64.b64encode(message.value or b""),
                reason=reason[:2000],
                component=self.component,
            )
            self.producer.send(self.topic, key=message.key, value=to_json(letter))
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
