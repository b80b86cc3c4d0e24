"""`idproxy bench pipeline`: publish rate, worker throughput against the bare model, and
upload-to-servable freshness at a stated upload rate, on a broker from the ladder.

1. bare model: ``ProxyService.run`` over the items in worker-sized batches (items/s),
   measured with the broker already running, so both sides share the same machine load;
2. publish: ``--events`` click events through the publisher's producer (events/s);
3. worker: the same items pre-published, one in-process worker drains them (items/s), and
   the ratio worker / bare (goal ≥ 0.85: streaming overhead small next to the model);
4. freshness: items uploaded at ``--rate`` items/s while a worker and the materializer run;
   freshness = time the proxy became servable in the store − upload time (p50/p99).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

from idproxy.settings import Settings, tiny_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=4.0, help="uploads/s for the freshness run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the freshness run")
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke test)")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from kafka import KafkaProducer
    from rich.console import Console
    from rich.table import Table

    from idproxy.broker_ladder import broker_from_ladder
    from idproxy.movielens import load_movielens
    from proxy_model.encoder import ItemContent
    from proxy_model.service import ProxyService
    from store import ProxyStore
    from streams.events import Click, ItemUploaded, to_json
    from streams.kafka_config import producer_config
    from streams.materializer import Materializer
    from streams.worker import ProxyWorker

    service = ProxyService.from_settings(tiny_profile(settings) if args.tiny else settings)
    settings.model.id_dim = service.id_dim
    data = load_movielens()
    ids = data.item_ids[: args.items]
    texts = {i: data.item_text(i) for i in data.item_ids}
    batch = settings.worker.batch_max_items

    with broker_from_ladder(settings) as broker, tempfile.TemporaryDirectory() as tmp:
        settings.kafka.bootstrap = broker.bootstrap
        settings.kafka.topic_prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        worker = ProxyWorker(settings, broker, service)  # creates the topics

        # the bare model under the same conditions (broker up), on the same items
        start = time.perf_counter()
        for s in range(0, len(ids), batch):
            service.run([ItemContent(texts[i]) for i in ids[s : s + batch]])
        bare = len(ids) / (time.perf_counter() - start)
        producer = KafkaProducer(**producer_config(settings, broker))

        clicks = [
            to_json(Click(user_id=str(k % 943), item_id=str(k % 1682), label=k % 2, ts=float(k)))
            for k in range(args.events)
        ]
        start = time.perf_counter()
        for k, value in enumerate(clicks):
            producer.send(worker.topics.clicks, key=str(k % 943).encode(), value=value)
        producer.flush()
        publish_rate = len(clicks) / (time.perf_counter() - start)

        def upload(item: int) -> None:
            event = ItemUploaded(
                item_id=f"{item}-{uuid.uuid4().hex[:4]}", title=texts[item], uploaded_at=time.time()
            )
            producer.send(worker.topics.items, key=event.item_id.encode(), value=to_json(event))

        for i in ids:
            upload(i)
        producer.flush()
        stats = worker.run(idle_exit_s=3)
        # from the first polled batch to the last commit (group join excluded)
        worker_rate = stats.items / (stats.finished_at - stats.first_batch_at)

        # freshness at a steady upload rate, worker + materializer running alongside
        settings.kafka.topic_prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        settings.worker.batch_max_wait_ms = 200
        worker = ProxyWorker(settings, broker, service)
        store = ProxyStore(f"{tmp}/store", dim=service.id_dim)
        materializer = Materializer(settings, broker, store, group_id="bench")
        threads = [
            threading.Thread(target=worker.run, kwargs={"idle_exit_s": 6}),
            threading.Thread(target=materializer.run, kwargs={"idle_exit_s": 8}),
        ]
        for t in threads:
            t.start()
        n_fresh = int(args.rate * args.seconds)
        t0 = time.time()
        for k in range(n_fresh):
            time.sleep(max(0.0, t0 + k / args.rate - time.time()))
            upload(data.item_ids[k % len(data.item_ids)])
            producer.flush()
        for t in threads:
            t.join()
        producer.close()
        store.close()
        fresh = list(materializer.freshness.values())

    table = Table(
        title=f"Pipeline on rung {broker.rung} ({broker.name}), model {service.featurizer.encoder.name}"
    )
    table.add_column("measure")
    table.add_column("value")
    rows = [
        (f"bare model, items/s (batch {batch})", f"{bare:.2f}"),
        (f"publish, events/s ({len(clicks)} clicks)", f"{publish_rate:,.0f}"),
        (f"worker, items/s ({stats.items} items)", f"{worker_rate:.2f}"),
        ("worker / bare model", f"{worker_rate / bare:.3f}"),
        (
            f"freshness p50 s at {args.rate:g} uploads/s ({len(fresh)} items)",
            f"{_pct(fresh, 0.5):.3f}",
        ),
        ("freshness p99 s", f"{_pct(fresh, 0.99):.3f}"),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    print(
        json.dumps(
            {
                "bench": "pipeline",
                "rung": broker.rung,
                "model": service.featurizer.encoder.name,
                "bare_items_per_s": round(bare, 3),
                "publish_events_per_s": round(publish_rate),
                "worker_items_per_s": round(worker_rate, 3),
                "worker_over_bare": round(worker_rate / bare, 3),
                "upload_rate": args.rate,
                "freshness_items": len(fresh),
                "freshness_p50_s": round(_pct(fresh, 0.5), 3),
                "freshness_p99_s": round(_pct(fresh, 0.99), 3),
            }
        )
    )
    return 0
