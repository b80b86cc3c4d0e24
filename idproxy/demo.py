"""`idproxy demo`: the whole live system on a MovieLens-100K replay, from one command.

1. A broker by the ladder (Apache Kafka from jars where present, else embedded Tansu).
2. Supervised subprocesses (logs in ``<run>/logs``): the store materializer and its HTTP
   read API, the faust processor and ``demo.workers`` proxy workers (real weights unless
   ``--tiny``, the tiny settings profile: ``IDPROXY_MODEL_ENCODER=tiny`` for every child).
3. Go-live as paper §3.2.4 deploys: each item is uploaded ``upload_lead_days`` dataset
   days before its first rating. The launch catalogue (items uploaded by go-live) goes
   first and the demo waits until it is servable. The history period (the first
   ``history_fraction`` of the ratings) is then sent as clicks without waiting, and
   ``idproxy bootstrap`` trains the ID-only ranker on it, fits Stage 1 to its ID table and
   pretrains Stage 2 (publishing that bundle and its proxies).
4. Live: two online trainers resume from the bootstrap on the same ``samples`` stream
   (``idproxy`` with the proxies in the ID slot, and the ``id-only`` baseline, each its
   own consumer group, at niceness ``trainer_nice`` so the worker keeps its core), and the
   re-alignment scheduler keeps φ aligned to the ID-only trainer's table. The remaining
   ratings arrive as clicks in time order, compressed to ``replay_s`` seconds, and the
   remaining items are uploaded live, so new items keep arriving. The summary scores only
   these live samples.
   Events are stamped with the wall-clock time they are sent (freshness, item age).
5. Progress lines while it runs; then it waits until every item is servable and both
   trainers have consumed every sample, stops everything (SIGTERM, then SIGKILL; also on
   Ctrl-C) and prints the summary (``idproxy.demo_report``): counts, DLQ, freshness,
   online AUC of IDProxy vs ID-only on new and on all items, the versions published,
   PNG plots and one JSON line.

Everything lives under ``<run_dir>/demo-<time>/``: topics get a run-unique prefix, and the
store, trainer states and proxy bundles are private to the run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from idproxy.client import ProxyAPIError, ProxyClient
from idproxy.demo_faults import DemoBroker, fault_schedule, inject
from idproxy.demo_golive import bootstrap, run_to_end
from idproxy.demo_plan import Plan, make_plan
from idproxy.settings import Settings
from idproxy.supervisor import http_probe, metrics_probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small replay (about 2 minutes)")
    parser.add_argument("--tiny", action="store_true", help="tiny random encoder (tests)")
    parser.add_argument("--ratings", type=int, help="ratings to replay (default from settings)")
    parser.add_argument("--replay-s", type=float, help="wall-clock length of the replay")
    parser.add_argument("--workers", type=int, help="proxy workers (default from settings)")
    parser.add_argument("--run-dir", help="output folder (default <run_dir>/demo-<time>)")
    parser.add_argument(
        "--kill-each",
        action="store_true",
        help="fault drill: SIGKILL and restart the worker, processor, trainer, materializer "
        "and the broker (Apache Kafka rung) in turn during the replay",
    )
    parser.add_argument(
        "--fault-rounds",
        type=int,
        default=None,
        metavar="N",
        help="repeated-fault drill: SIGKILL and restart each of them N times, at seeded random "
        "moments of the replay (--kill-each is N = 1)",
    )
    parser.add_argument(
        "--pause-consumer",
        action="store_true",
        help="fault drill: also SIGSTOP the proxy worker past its group session timeout, then "
        "SIGCONT it",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault moments")
    parser.add_argument(
        "--bad-share",
        type=float,
        default=0.0,
        help="bad-input flood: this share of extra malformed events on items and clicks",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from idproxy.demo_report import count_dead_letters, write_report
    from idproxy.supervisor import ChildFailed, Supervisor
    from streams.broker import free_port

    plan = make_plan(args, settings)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"demo: {plan.ratings:,} ratings, {plan.items:,} items, replay {plan.replay_s:.0f} s "
        f"(x{plan.speed:,.0f}), launch catalogue {len(plan.catalogue):,} items, "
        f"{plan.workers} worker(s), "
        f"{'tiny' if plan.tiny else 'real-weight'} encoder; output in {plan.run_dir}",
        flush=True,
    )
    with DemoBroker(settings, plan) as broker:
        print(f"demo: broker rung {broker.rung} ({broker.name}) at {broker.bootstrap}", flush=True)
        port = free_port()
        env = {
            **broker.child_env(),
            "IDPROXY_KAFKA_TOPIC_PREFIX": f"demo-{plan.run_dir.name}-",
            "IDPROXY_STORE_PATH": str(plan.run_dir / "store"),
            "IDPROXY_STORE_HTTP_PORT": str(port),
            "IDPROXY_MODEL_ARTIFACTS_DIR": str(plan.run_dir / "artifacts"),
            "IDPROXY_MODEL_ID_DIM": str(plan.id_dim),
            **({"IDPROXY_MODEL_ENCODER": "tiny"} if plan.tiny else {}),
            "IDPROXY_TRAINER_CHECKPOINT_EVERY_S": str(plan.checkpoint_every_s),
            "IDPROXY_TRAINER_REPORT_EVERY_S": str(settings.demo.progress_every_s / 2),
            "IDPROXY_TRAINER_THREADS": "1",  # two trainers and the worker share the cores
            # "new" by age: one dataset day, in compressed wall-clock seconds
            "IDPROXY_TRAINER_NEW_ITEM_AGE_S": str(86400 / plan.speed),
        }
        token = settings.store.api_token  # the api child reads the same settings
        api = ProxyClient(
            f"http://127.0.0.1:{port}", token.get_secret_value() if token else None, retries=0
        )
        started = time.time()
        try:
            with Supervisor(plan.run_dir / "logs", env) as sup, api:
                _start_components(sup, plan, settings, f"http://127.0.0.1:{port}/healthz")
                replay = ["publish", "movielens", "--limit", str(plan.ratings), "--restamp"]
                replay += ["--upload-lead-days", str(plan.upload_lead_days)]
                replay += ["--history", str(plan.history)]
                _launch_catalogue(sup, plan, settings, api, replay)
                bootstrap(sup, plan, settings, broker, replay)
                _start_trainers(sup, plan, settings)
                live_from = time.time()
                _replay(sup, plan, settings, api, broker, replay)
                _drain(sup, plan, settings, api)
                _stop_in_order(sup)
                malformed = _published(sup).get("malformed", 0)
            dlq = count_dead_letters(settings, broker.current, env["IDPROXY_KAFKA_TOPIC_PREFIX"])
        except ChildFailed as exc:
            print(f"demo: a component failed: {exc}", flush=True)
            return 1
        except KeyboardInterrupt:
            print("demo: interrupted; every component was stopped", flush=True)
            return 130
    summary = write_report(
        plan,
        live_from=live_from,
        broker_rung=broker.rung,
        seconds=time.time() - started,
        dlq=dlq,
        malformed=malformed,
        faults=sup.restarts,
    )
    print(json.dumps(summary), flush=True)
    return 0


def _monitored(sup, name: str, component: str, args: list[str], **kwargs) -> None:
    """Starts ``idproxy <args> --metrics-port P`` (a free port) with its readiness probe."""
    from streams.broker import free_port

    port = free_port()
    sup.start(
        name, [*args, "--metrics-port", str(port)], ready=metrics_probe(component, port), **kwargs
    )


def _start_components(sup, plan: Plan, settings: Settings, api_health: str) -> None:
    """Starts the materializer, read API, processor and workers; waits on their health
    endpoints (``idproxy_<component>_ready``, the API's /healthz)."""
    ready = settings.demo.ready_timeout_s
    r = plan.run_dir
    stats = ["--stats-file", str(r / "materializer.json")]
    _monitored(sup, "materializer", "materializer", ["materialize", *stats])
    sup.wait_ready("materializer", ready)
    sup.start("api", ["store", "serve"], ready=http_probe(api_health))
    _monitored(sup, "processor", "processor", ["processor", "--datadir", str(r / "processor")])
    workers = [f"worker-{k}" for k in range(plan.workers)]
    for name in workers:
        _monitored(sup, name, "worker", ["worker", "--client-id", name])
    for name in ("api", "processor", *workers):
        sup.wait_ready(name, ready)
    print("demo: components ready; uploading the launch catalogue", flush=True)


def _start_trainers(sup, plan: Plan, settings: Settings) -> None:
    """The two live trainers (resuming from the bootstrap) and the re-alignment schedule."""
    r = plan.run_dir
    nice = settings.demo.trainer_nice
    for variant in ("idproxy", "id-only"):
        state = ["--state-dir", str(r / f"trainer-{variant}")]
        _monitored(
            sup,
            f"trainer-{variant}",
            "trainer",
            ["trainer", "--variant", variant, *state],
            nice=nice,
        )
    sup.start(
        "scheduler",
        [
            "realign",
            "--schedule",
            "--interval-s",
            str(plan.realign_interval_s),
            "--state-dir",
            str(r / "realign"),
        ],
        nice=nice,
    )
    ready = settings.demo.ready_timeout_s
    for name in ("trainer-id-only", "trainer-idproxy"):
        sup.wait_ready(name, ready)
    print("demo: trainers live; starting the replay", flush=True)


def _replay(
    sup, plan: Plan, settings: Settings, api: ProxyClient, broker: DemoBroker, replay: list[str]
) -> None:
    """Runs the publisher of the live part and prints progress until it has sent every
    event; with ``kill_each``, SIGKILLs and restarts one component after another meanwhile."""
    from idproxy.supervisor import ChildFailed

    sup.start(
        "publisher",
        [
            *replay,
            "--part",
            "stream",
            "--speed",
            str(plan.speed),
            "--bad-share",
            str(plan.bad_share),
        ],
    )
    victims, kill_at = fault_schedule(plan, time.time())
    publisher = sup.children["publisher"]
    last_progress = 0.0
    while publisher.proc.poll() is None:
        time.sleep(1)
        if victims and time.time() >= kill_at[0]:
            inject(sup, victims[0], broker, settings)
            victims, kill_at = victims[1:], kill_at[1:]
        sup.check_alive([n for n in sup.children if n != "publisher"])
        if time.time() - last_progress >= settings.demo.progress_every_s:
            _progress(plan, api, "replay")
            last_progress = time.time()
    for victim in victims:  # the replay was faster than planned: finish the drill
        inject(sup, victim, broker, settings)
    if publisher.proc.returncode != 0:
        raise ChildFailed(f"publisher exited ({publisher.proc.returncode}):\n{publisher.tail()}")
    sup.stop("publisher")  # done: no longer watched


def _launch_catalogue(
    sup, plan: Plan, settings: Settings, api: ProxyClient, replay: list[str]
) -> None:
    """Uploads the launch catalogue (items uploaded by go-live) and waits, at most
    ``catalogue_timeout_s``, until it is servable: the system goes live with its catalogue
    proxied, as a production launch would after a backfill, and the clicks start then.

    Without this, ML-100K's first month (1,186 of 1,682 items are first rated in it) lands
    as one burst that one CPU worker needs minutes to clear, so most first clicks of new
    items would find no proxy yet (16–31 % would, by a FIFO estimate at 6–10 items/s).
    """
    run_to_end(sup, "catalogue", [*replay, "--part", "catalogue"])
    end, last = time.time() + plan.catalogue_timeout_s, 0.0
    while (servable := _servable(api)[0]) < len(plan.catalogue):
        sup.check_alive()
        if time.time() >= end:
            print(
                f"demo: only {servable}/{len(plan.catalogue)} catalogue items servable after "
                f"{plan.catalogue_timeout_s:.0f} s; starting the clicks anyway",
                flush=True,
            )
            break
        if time.time() - last >= settings.demo.progress_every_s:
            _progress(plan, api, "catalogue")
            last = time.time()
        time.sleep(1)
    print(f"demo: launch catalogue servable ({servable} items); starting the clicks", flush=True)


def _published(sup) -> dict:
    """The publisher's final JSON line (counts of valid and malformed events sent)."""
    lines = [ln for ln in sup.logs("publisher").splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _drain(sup, plan: Plan, settings: Settings, api: ProxyClient) -> None:
    """Waits until both trainers saw every click and every item is servable."""
    end = time.time() + plan.drain_timeout_s
    while time.time() < end:
        sup.check_alive()
        state = _progress(plan, api, "catch-up")
        if min(state["samples"].values()) >= plan.clicks and state["servable"] >= plan.items:
            return
        time.sleep(settings.demo.progress_every_s)
    print("demo: the pipeline did not catch up in time; stopping with what is done", flush=True)


def _stop_in_order(sup) -> None:
    """Producers of work first, the store last; each gets SIGTERM, then SIGKILL."""
    for name in ["publisher", "scheduler", *[n for n in sup.children if n.startswith("worker")]]:
        sup.stop(name)
    for name in ["processor", "trainer-idproxy", "trainer-id-only", "materializer", "api"]:
        sup.stop(name, grace_s=60)


def _progress(plan: Plan, api: ProxyClient, phase: str) -> dict:
    """Prints one progress line; returns {servable, samples: {variant: n}}."""
    samples, aucs = {}, {}
    for variant in ("idproxy", "id-only"):
        line = _last_metrics(plan.run_dir / f"trainer-{variant}" / "metrics.jsonl")
        samples[variant] = line.get("samples", 0)
        aucs[variant] = line.get("auc_new")
    servable, active = _servable(api)
    auc = " vs ".join(f"{v} {a:.3f}" if a is not None else f"{v} -" for v, a in aucs.items())
    print(
        f"[{phase}] items servable {servable}/{plan.items} (version {active}) | samples trained "
        f"{samples['idproxy']}/{samples['id-only']} of {plan.clicks} | window AUC new: {auc}",
        flush=True,
    )
    return {"servable": servable, "samples": samples}


def _last_metrics(path: Path) -> dict:
    if not path.is_file():
        return {}
    lines = path.read_text().strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _servable(api: ProxyClient) -> tuple[int, str | None]:
    """(items in the active version, its name), read through the store's read API."""
    try:
        body = api.versions()
    except ProxyAPIError:  # not up yet, or restarting
        return 0, None
    active = body.get("active")
    counts = {v["version"]: v["item_count"] for v in body.get("versions", [])}
    return counts.get(active, 0), active
