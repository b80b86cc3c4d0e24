"""`idproxy bench load`: the sustainable upload rate of N proxy workers, by a stepped ramp.

On a broker from the ladder, for each worker count N of ``--workers`` (fresh topics and
consumer groups per N, so counts and steps never mix):

1. the store materializer runs in this process (a thread stepping ``Materializer``, like
   ``bench pipeline``) and N ``idproxy worker`` subprocesses join one consumer group, each
   with ``--threads-per-worker`` torch threads (default: cores // N);
2. warm-up: each worker's ready line, the group owning every partition, then
   ``--warmup-items`` items servable before any timing;
3. the ramp: MovieLens-100K titles (``--images`` adds a generated 224 px image each) are
   uploaded at each rate of ``--rates`` items/s for ``--step-s`` s, every item with a
   unique id; after a step's last upload the bench waits (at most ``--drain-s``) for its
   items, so the next step starts on an empty queue. Per step: freshness (servable in the
   store − upload time, s) p50/p99 by nearest rank over the step's items (an item not
   servable by the deadline counts with its wait so far, a lower bound) and the achieved
   throughput = servable items / (last servable − first upload), items/s;
4. the ramp stops at the first step whose p99 reaches ``--p99-limit``.

Sustainable rate of N = the highest rate whose p99 stayed under the limit; when no step
reached the limit it is only a lower bound ("not saturated"). Scaling of N = sustainable(N)
/ sustainable(first N). Writes ``results.json``, ``p99_vs_rate.png`` and the worker logs into
``<run_dir>/bench-load-<time>/``, prints the tables and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from idproxy.settings import Settings, tiny_profile

ASSIGNED = re.compile(r"worker (\S+) assigned partitions \[([\d, ]*)\]")
STOPPED = re.compile(r"stopped: (\d+) items")
READY = re.compile(r"ready \(proxy version (\S+)\)")


def _numbers(kind: type) -> Callable[[str], list]:
    """Parser of a comma-separated list of positive numbers (``"1,2,4"``)."""

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive numbers like 1,2,4: {text!r}")
        return values

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=_numbers(int), default=[1, 2], help="worker counts (default 1,2)"
    )
    parser.add_argument(
        "--rates",
        type=_numbers(float),
        default=[1.0, 2.0, 4.0, 8.0, 16.0],
        help="upload rates of the ramp, items/s (default 1,2,4,8,16)",
    )
    parser.add_argument("--step-s", type=float, default=30.0, help="uploads per step, seconds")
    parser.add_argument("--p99-limit", type=float, default=5.0, help="freshness p99 limit, s")
    parser.add_argument(
        "--drain-s", type=float, default=60.0, help="max wait for a step's items after its uploads"
    )
    parser.add_argument("--warmup-items", type=int, default=16, help="items before timing")
    parser.add_argument(
        "--threads-per-worker", type=int, default=0, help="torch threads; 0 = cores // workers"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=300.0, help="max start + warm-up time, s"
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=60.0, help="max wait for the group to split, s"
    )
    parser.add_argument(
        "--upload-timeout", type=float, default=30.0, help="max wait for an upload's ack, s"
    )
    parser.add_argument("--images", action="store_true", help="a generated image on every item")
    parser.add_argument("--tiny", action="store_true", help="tiny random encoder (tests)")


@dataclass
class Step:
    """One rate step of one worker count."""

    workers: int
    rate: float  # target upload rate, items/s
    items: int  # uploaded
    servable: int  # servable by the drain deadline
    p50_s: float  # freshness, s
    p99_s: float
    items_per_s: float  # achieved: servable / (last servable - first upload)
    under_limit: bool  # p99 < the limit


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile (0 < q <= 1) by nearest rank, an observed value.

    >>> nearest_rank([3.0, 1.0, 2.0], 0.5), nearest_rank([float(v) for v in range(50)], 0.99)
    (2.0, 49.0)
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def sustainable_rate(steps: list[Step]) -> float | None:
    """The highest rate whose p99 stayed under the limit; None when none did.

    >>> s = [Step(1, r, 10, 10, 0.5, p, r, p < 5) for r, p in ((1, 1.0), (2, 2.0), (4, 9.0))]
    >>> sustainable_rate(s)
    2
    """
    rates = [s.rate for s in steps if s.under_limit]
    return max(rates) if rates else None


class _StoreThread:
    """The materializer in a thread of this process, ``Materializer.step()`` until stopped;
    ``freshness()`` is its item -> seconds from upload to servable."""

    def __init__(self, settings: Settings, broker, path: str) -> None:
        from store import ProxyStore
        from streams.materializer import Materializer

        self.store = ProxyStore(path, dim=settings.model.id_dim)
        self.materializer = Materializer(
            settings, broker, self.store, group_id=f"{settings.kafka.topic_prefix}materializer"
        )
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="materializer", daemon=True)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.materializer.step()
        except BaseException as exc:  # surfaced in the main thread by check()
            self.error = exc
        finally:  # here, so that a close hanging on a dead broker cannot block the bench
            self.materializer.close()

    def freshness(self) -> dict[str, float]:
        self.check()
        return dict(self.materializer.freshness)

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the materializer failed: {self.error!r}") from self.error

    def __enter__(self) -> _StoreThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if not self._thread.is_alive():  # else it may still write: leave it to the exit
            self.store.close()


def _image_pool(n: int, size: int) -> list[str]:
    """``n`` generated images (bench encoder's patterns), JPEG, base64."""
    from benchmarks.bench_encoder import _images

    out = []
    for image in _images(n, size):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


class _Uploader:
    """Sends ItemUploaded events (unique ids) to the items topic; returns upload times (s)."""

    def __init__(
        self, settings: Settings, broker, catalog: list[str], images: list[str], timeout_s: float
    ) -> None:
        from kafka import KafkaProducer

        from streams.kafka_config import producer_config
        from streams.topics import Topics

        self.producer = KafkaProducer(**producer_config(settings, broker))
        self.topic = Topics.from_settings(settings).items
        self.catalog = catalog  # titles, cycled
        self.images = images  # base64 images, cycled; empty for text-only
        self.sent = 0
        self.timeout_s = timeout_s  # an upload not acknowledged in this time fails the bench

    def send(self, item_id: str) -> float:
        """Uploads the next catalog item as ``item_id``; its upload time (time.time())."""
        now = time.time()
        event: dict = {"item_id": item_id, "title": self.catalog[self.sent % len(self.catalog)]}
        if self.images:
            event["image_b64"] = self.images[self.sent % len(self.images)]
        event["uploaded_at"] = now
        self.producer.send(self.topic, key=item_id.encode(), value=json.dumps(event).encode())
        self.producer.flush(timeout=self.timeout_s)  # KafkaTimeoutError if the broker is gone
        self.sent += 1
        return now

    def close(self) -> None:
        self.producer.close(timeout=self.timeout_s)


def _owned(sup, names: list[str]) -> dict[str, list[int]]:
    """Each worker's partitions by its last logged assignment (absent: none logged yet)."""
    owned: dict[str, list[int]] = {}
    for name in names:
        found = ASSIGNED.findall(sup.children[name].output())
        if found:
            owned[name] = [int(p) for p in found[-1][1].split(",") if p.strip()]
    return owned


def _wait_assigned(sup, names: list[str], partitions: int, timeout: float) -> dict | None:
    """Blocks until the workers' last logged assignments split every partition among them
    all (the group is stable); {worker: partitions}, or None after ``timeout`` s."""
    end = time.time() + timeout
    while time.time() < end:
        sup.check_alive(names)
        owned = _owned(sup, names)
        flat = sorted(p for parts in owned.values() for p in parts)
        if len(owned) == len(names) and all(owned.values()) and flat == list(range(partitions)):
            return owned
        time.sleep(0.3)
    return None


def _start_workers(sup, names: list[str], argv: Callable[[str], list[str]], args, parts: int):
    """Starts the workers one at a time; each must print its ready line and the group must
    split all ``parts`` partitions among the started ones before the next one starts.

    (Members joining at once on just-created topics once left one member stuck with no
    partitions, never rejoining.) A group that does not settle in ``--settle-timeout`` s
    gets its workers without partitions (else the newest) restarted, once. Returns
    (proxy version, {worker: partitions}).
    """
    from idproxy.supervisor import ChildFailed

    owned: dict | None = None
    for k, name in enumerate(names):
        started = names[: k + 1]
        sup.start(name, argv(name))
        for attempt in range(2):
            sup.wait_for(name, "ready (proxy version", args.ready_timeout)
            owned = _wait_assigned(sup, started, parts, args.settle_timeout)
            if owned is not None:
                break
            if attempt == 1:
                raise ChildFailed(f"the worker group did not settle: {_owned(sup, started)}")
            last = _owned(sup, started)
            stuck = [n for n in started if not last.get(n)] or [name]
            print(f"bench load: group not settled ({last}); restarting {stuck}", flush=True)
            for victim in stuck:
                sup.stop(victim)
                sup.start(victim, argv(victim))
                sup.wait_for(victim, "ready (proxy version", args.ready_timeout)
    version = READY.search(sup.children[names[0]].output()).group(1)
    return version, owned


def _wait_servable(
    ids: dict[str, float], store: _StoreThread, check: Callable[[], None], deadline: float, bar
) -> dict[str, float]:
    """Waits until every id is servable or ``deadline``; the freshness of those that are."""
    while True:
        check()
        fresh = store.freshness()
        done = sum(1 for i in ids if i in fresh)
        if bar is not None:
            bar(done)
        if done == len(ids) or time.time() >= deadline:
            return {i: fresh[i] for i in ids if i in fresh}
        time.sleep(0.1)


def _run_step(n: int, rate: float, args, up: _Uploader, store, check, progress) -> Step:
    """Uploads ``rate`` items/s for ``step_s`` s, waits for them; the step's figures."""
    count = max(1, round(rate * args.step_s))
    task = progress.add_task(f"{n} worker(s) @ {rate:g}/s: upload", total=count)
    uploaded: dict[str, float] = {}
    start = time.time()
    for k in range(count):
        time.sleep(max(0.0, start + k / rate - time.time()))
        item_id = f"w{n}-r{rate:g}-{k}"
        uploaded[item_id] = up.send(item_id)
        if k % max(1, int(rate)) == 0:
            fresh = store.freshness()
            progress.update(task, completed=sum(1 for i in uploaded if i in fresh))
            check()
    progress.update(task, description=f"{n} worker(s) @ {rate:g}/s: drain")
    fresh = _wait_servable(
        uploaded,
        store,
        check,
        time.time() + args.drain_s,
        lambda done: progress.update(task, completed=done),
    )
    progress.remove_task(task)
    now = time.time()
    # an item never servable counts with its wait so far (a lower bound of its freshness)
    values = [fresh.get(i, now - t) for i, t in uploaded.items()]
    first = min(uploaded.values())
    last_servable = max((uploaded[i] + f for i, f in fresh.items()), default=first)
    p99 = nearest_rank(values, 0.99)
    return Step(
        workers=n,
        rate=rate,
        items=count,
        servable=len(fresh),
        p50_s=round(nearest_rank(values, 0.5), 3),
        p99_s=round(p99, 3),
        items_per_s=round(len(fresh) / max(last_servable - first, 1e-9), 3) if fresh else 0.0,
        under_limit=p99 < args.p99_limit,
    )


def _ramp(n: int, args, settings: Settings, broker, out: Path, catalog, images, progress) -> dict:
    """Starts the materializer and ``n`` workers, warms up, runs the ramp; the results of n."""
    from idproxy.supervisor import ChildFailed, Supervisor

    s = (tiny_profile(settings) if args.tiny else settings).model_copy(deep=True)
    s.kafka.bootstrap = broker.bootstrap
    s.kafka.embedded_tansu = bool(broker.quirks)
    s.kafka.topic_prefix = f"{out.name}-w{n}-"
    s.worker.group_id = f"{s.kafka.topic_prefix}workers"
    if args.tiny:
        s.model.artifacts_dir = str(out / "artifacts")  # no tiny bundle in the real one
    threads = args.threads_per_worker or max(1, (os.cpu_count() or 1) // n)
    env = {
        **broker.child_env(),
        "IDPROXY_KAFKA_TOPIC_PREFIX": s.kafka.topic_prefix,
        "IDPROXY_KAFKA_PARTITIONS": str(s.kafka.partitions),
        "IDPROXY_WORKER_GROUP_ID": s.worker.group_id,
        "IDPROXY_WORKER_METRICS_PORT": "0",
        "IDPROXY_MODEL_ID_DIM": str(s.model.id_dim),
        "IDPROXY_MODEL_ARTIFACTS_DIR": s.model.artifacts_dir,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    names = [f"w{n}-worker-{k}" for k in range(n)]
    steps: list[Step] = []
    with (
        tempfile.TemporaryDirectory(prefix="idproxy-bench-load-") as tmp,
        _StoreThread(s, broker, f"{tmp}/store") as store,
        Supervisor(out / "logs", env) as sup,
    ):
        up = _Uploader(s, broker, catalog, images, args.upload_timeout)
        try:

            def check() -> None:
                sup.check_alive(names)
                store.check()
                if broker.process is not None and broker.process.poll() is not None:
                    raise ChildFailed(f"the broker exited ({broker.process.returncode})")

            up.producer.partitions_for(up.topic)  # the new topic's metadata is out
            tiny = ["--tiny"] if args.tiny else []
            version, owned = _start_workers(
                sup,
                names,
                lambda name: ["worker", "--client-id", name, *tiny],
                args,
                s.kafka.partitions,
            )
            warm = {f"w{n}-warm-{k}": 0.0 for k in range(args.warmup_items)}
            for item_id in warm:
                warm[item_id] = up.send(item_id)
            got = _wait_servable(warm, store, check, time.time() + args.ready_timeout, None)
            if len(got) < len(warm):
                raise ChildFailed(f"warm-up: {len(got)}/{len(warm)} items servable in time")
            progress.console.print(
                f"{n} worker(s) ready ({threads} torch thread(s) each, partitions {owned}); "
                f"warm-up of {len(warm)} items done"
            )
            for rate in args.rates:
                step = _run_step(n, rate, args, up, store, check, progress)
                steps.append(step)
                progress.console.print(
                    f"{n} worker(s) @ {rate:g}/s: {step.servable}/{step.items} servable, "
                    f"p50 {step.p50_s:.2f} s, p99 {step.p99_s:.2f} s, "
                    f"{step.items_per_s:.2f} items/s"
                )
                if not step.under_limit:
                    break
        finally:
            up.close()
            per_worker = {}
            for name in names:
                sup.stop(name)
                found = STOPPED.findall(sup.logs(name))
                per_worker[name] = int(found[-1]) if found else None
    rate = sustainable_rate(steps)
    return {
        "workers": n,
        "threads_per_worker": threads,
        "proxy_version": version,
        "topic_prefix": s.kafka.topic_prefix,
        "sustainable_rate": rate,
        "saturated": any(not st.under_limit for st in steps),
        "items_per_worker": per_worker,  # warm-up included
        "steps": [asdict(st) for st in steps],
    }


def scaling(results: dict[int, dict]) -> dict[str, float | None]:
    """Sustainable rate of each worker count over that of the first one (None if either
    is None)."""
    base = next(iter(results.values()))["sustainable_rate"] if results else None
    return {
        str(n): round(r["sustainable_rate"] / base, 3) if base and r["sustainable_rate"] else None
        for n, r in results.items()
    }


def scaling_kind(results: dict[int, dict]) -> dict[str, str]:
    """What each scaling factor is: "exact" when both counts saturated (their sustainable
    rates are measured), "lower bound" when only the first did (the other's rate is a lower
    bound), else "undetermined" (the first count's rate is itself only a lower bound).

    >>> scaling_kind({1: {"saturated": True}, 2: {"saturated": False}})
    {'1': 'exact', '2': 'lower bound'}
    """
    base = next(iter(results.values()))["saturated"] if results else False
    return {
        str(n): ("exact" if r["saturated"] else "lower bound") if base else "undetermined"
        for n, r in results.items()
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, settings: Settings) -> int:
    from kafka.errors import KafkaError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from idproxy.broker_ladder import broker_from_ladder
    from idproxy.movielens import load_movielens
    from idproxy.supervisor import ChildFailed

    console = Console()
    if max(args.workers) > settings.kafka.partitions:
        console.print(
            f"error: {max(args.workers)} workers need as many partitions "
            f"(IDPROXY_KAFKA_PARTITIONS={settings.kafka.partitions})"
        )
        return 2
    out = (Path(settings.run_dir) / f"bench-load-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = load_movielens()
    catalog = [data.item_text(i) for i in data.item_ids]
    images = _image_pool(32, settings.model.image_size) if args.images else []
    model = "tiny" if args.tiny else (settings.model.lm_path or "smollm2-135m") + " (real weights)"
    load_before = os.getloadavg()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops cleanly, like Ctrl-C
    results: dict[int, dict] = {}
    status = 0
    with broker_from_ladder(settings) as broker:
        console.print(
            f"bench load: broker rung {broker.rung} ({broker.name}), {model}, "
            f"{'image+text' if args.images else 'text-only'}, workers {args.workers}, "
            f"rates {args.rates} items/s x {args.step_s:g} s, p99 limit {args.p99_limit:g} s; "
            f"output in {out}"
        )
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("servable"),
            TimeElapsedColumn(),
            console=console,
        )
        try:
            with progress:
                for n in args.workers:
                    results[n] = _ramp(n, args, settings, broker, out, catalog, images, progress)
        except KeyboardInterrupt:
            console.print("bench load: interrupted; every worker was stopped")
            status = 130
        except (ChildFailed, RuntimeError, KafkaError) as exc:
            console.print(f"bench load: failed: {exc}")
            status = 1
    signal.signal(signal.SIGTERM, previous)
    load_after = os.getloadavg()
    summary = {
        "bench": "load",
        "rung": broker.rung,
        "model": model,
        "images": args.images,
        "p99_limit_s": args.p99_limit,
        "step_s": args.step_s,
        "rates": args.rates,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "workers": {str(n): r for n, r in results.items()},
        "scaling": scaling(results),
        "scaling_kind": scaling_kind(results),
        "complete": status == 0,
        "out_dir": str(out),
        "plot": str(out / "p99_vs_rate.png"),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    if results:
        _plot(out / "p99_vs_rate.png", results, args.p99_limit, f"rung {broker.rung}, {model}")
        _print_tables(console, results, summary)
    print(json.dumps(summary), flush=True)
    return status


def _print_tables(console, results: dict[int, dict], summary: dict) -> None:
    from rich.table import Table

    limit = summary["p99_limit_s"]
    table = Table(title=f"Freshness per rate step ({summary['step_s']:g} s each)")
    for col in (
        "workers",
        "rate items/s",
        "items",
        "servable",
        "p50 s",
        "p99 s",
        "achieved items/s",
    ):
        table.add_column(col, justify="right")
    table.add_column(f"p99 < {limit:g} s")
    for n, r in results.items():
        for st in r["steps"]:
            table.add_row(
                str(n),
                f"{st['rate']:g}",
                str(st["items"]),
                str(st["servable"]),
                f"{st['p50_s']:.2f}",
                f"{st['p99_s']:.2f}" + ("" if st["servable"] == st["items"] else " (≥)"),
                f"{st['items_per_s']:.2f}",
                "yes" if st["under_limit"] else "NO",
            )
    console.print(table)
    final = Table(title="Sustainable upload rate (highest rate with p99 under the limit)")
    for col in ("workers", "sustainable items/s", "saturated", "scaling", "items per worker"):
        final.add_column(col, justify="right")
    for n, r in results.items():
        rate, sat = r["sustainable_rate"], r["saturated"]
        factor, kind = summary["scaling"][str(n)], summary["scaling_kind"][str(n)]
        final.add_row(
            str(n),
            "none" if rate is None else f"{'' if sat else '≥ '}{rate:g}",
            "yes" if sat else "no (lower bound)",
            "-" if factor is None else f"{factor:.2f}" + {"exact": ""}.get(kind, f" ({kind})"),
            ", ".join(str(v) for v in r["items_per_worker"].values()),
        )
    console.print(final)


def _plot(path: Path, results: dict[int, dict], limit: float, title: str) -> None:
    """p99 (solid) and p50 (dotted) freshness vs upload rate, one colour per worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, r in results.items():
        rates = [st["rate"] for st in r["steps"]]
        (line,) = ax.plot(
            rates, [st["p99_s"] for st in r["steps"]], marker="o", label=f"{n} worker(s) p99"
        )
        ax.plot(
            rates,
            [st["p50_s"] for st in r["steps"]],
            linestyle=":",
            color=line.get_color(),
            label=f"{n} worker(s) p50",
        )
    ax.axhline(limit, linestyle="--", color="grey", label=f"p99 limit {limit:g} s")
    ax.set_xscale("log", base=2)
    rates = sorted({st["rate"] for r in results.values() for st in r["steps"]})
    ax.set_xticks(rates, [f"{v:g}" for v in rates], minor=False)
    ax.set_xticks([], minor=True)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("upload rate, items/s")
    ax.set_ylabel("freshness (upload → servable), s")
    ax.set_title(f"bench load: {title}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
