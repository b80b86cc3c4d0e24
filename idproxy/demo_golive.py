"""The demo's go-live: the history period's clicks, then `idproxy bootstrap` (paper §3.2.4)."""

from __future__ import annotations

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
    while (n := _samples_in_topic(settings, broker.current, samples_topic)) < plan.history:
        sup.check_alive()
        if time.time() >= end:
            raise ChildFailed(f"only {n}/{plan.history} history samples reached the topic")
        time.sleep(1)
    r = plan.run_dir
    tiny = ["--tiny"] if plan.tiny else []
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
            *tiny,
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


def _samples_in_topic(settings: Settings, broker, topic: str) -> int:
    """Records in ``topic`` (the sum of its partitions' end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.kafka_config import consumer_config

    consumer = KafkaConsumer(**consumer_config(settings, broker, None))
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return sum(ends.values())
    finally:
        consumer.close()
