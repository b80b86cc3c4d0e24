"""The demo's go-live: the history period's clicks, then `idproxy bootstrap` (paper §3.2.4)."""

from __future__ import annotations

import contextlib
import json
import time

from idproxy.demo_plan import Plan
from idproxy.settings import Settings


def bootstrap(sup, plan: Plan, settings: Settings, broker, replay: list[str]) -> None:
    """Sends the history period's clicks, waits until the processor has turned them into
    samples, then runs ``idproxy bootstrap`` (paper §3.2.4) on them."""
    from idproxy.supervisor import ChildFailed

    if not plan.history:
        return
    started = time.time()
    run_to_end(sup, "history", [*replay, "--part", "history"])
    end = time.time() + settings.demo.ready_timeout_s
    samples_topic = f"{sup.env['IDPROXY_KAFKA_TOPIC_PREFIX']}samples"
    in_topic = SamplesInTopic(settings, broker.current, samples_topic)
    try:
        while (n := in_topic.count()) < plan.history:
            sup.check_alive()
            if time.time() >= end:
                raise ChildFailed(f"only {n}/{plan.history} history samples reached the topic")
            time.sleep(1)
    finally:
        in_topic.close()
    r = plan.run_dir
    print(f"demo: {plan.history:,} history samples; bootstrapping the deployment", flush=True)
    run_to_end(
        sup,
        "bootstrap",
        [
            "bootstrap",
            "--id-only-state",
            str(r / "trainer-id-only"),
            "--idproxy-state",
            str(r / "trainer-idproxy"),
        ],
    )
    lines = [ln for ln in sup.logs("bootstrap").splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    (r / "bootstrap.json").write_text(json.dumps(result, indent=1))
    stage1 = result.get("stage1", {})
    print(
        f"demo: bootstrap done in {time.time() - started:.0f} s (Stage 1 "
        f"{'accepted' if stage1.get('accepted') else 'not accepted'}: {stage1.get('new')})",
        flush=True,
    )


def run_to_end(sup, name: str, args: list[str]) -> None:
    """Runs one supervised command to its end; raises ChildFailed if it fails."""
    from idproxy.supervisor import ChildFailed

    child = sup.start(name, args)
    while child.proc.poll() is None:
        sup.check_alive([n for n in sup.children if n != name])
        time.sleep(0.5)
    if child.proc.returncode != 0:
        raise ChildFailed(f"{name} exited ({child.proc.returncode}):\n{child.tail()}")
    sup.stop(name)


class SamplesInTopic:
    """Samples that reached ``topic`` so far: the counts in the headers of its frames
    (``streams/sample_batch.py``; re-deliveries included), each frame read once."""

    def __init__(self, settings: Settings, broker, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from streams.kafka_config import consumer_config
        from streams.topics import partitions_for

        self.consumer = KafkaConsumer(**consumer_config(settings, broker, None))
        self.tps = [TopicPartition(topic, p) for p in partitions_for(self.consumer, topic)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.samples = 0

    def count(self, timeout_s: float = 30.0) -> int:
        """Reads the frames up to the current end of the topic; the samples counted."""
        from streams.events import EventError, decode_frame
        from streams.sample_batch import SampleBatchHeader

        ends = self.consumer.end_offsets(self.tps)
        deadline = time.time() + timeout_s
        while time.time() < deadline and any(
            self.consumer.position(tp) < ends[tp] for tp in self.tps
        ):
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    with contextlib.suppress(EventError):  # not a frame of samples: none
                        self.samples += decode_frame(r.value, SampleBatchHeader)[0].count
        return self.samples

    def close(self) -> None:
        self.consumer.close()
