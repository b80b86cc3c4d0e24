"""What the online trainer reports: its metrics line (``metrics.jsonl``), its cumulative
summary (``summary.json``, the last line of ``idproxy trainer``) and its Prometheus
metrics."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from trainer.checkpoint import Predictions
from trainer.metrics import auc, logloss
from trainer.online_core import TrainerCore


def finite(x: float | None) -> float | None:
    """``x`` rounded to 6 digits, or None when it is missing or not finite (JSON-safe)."""
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def cumulative_summary(predictions: Predictions) -> dict:
    """Prequential AUC/LogLoss over every prediction so far, for all and for new items."""
    a = predictions.arrays()
    out: dict = {}
    for name, mask in (("all", np.ones(len(a["label"]), bool)), ("new", a["is_new"])):
        y, p = a["label"][mask], a["score"][mask]
        out[f"cum_auc_{name}"] = finite(auc(y, p)) if len(y) else None
        out[f"cum_logloss_{name}"] = finite(logloss(y, p)) if len(y) else None
        out[f"n_{name}"] = int(mask.sum())
    return out


def append_line(path: Path, line: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


class TrainerMetrics:
    """Prometheus metrics on host:port (off when port is 0); ``address`` is the bound one."""

    def __init__(self, port: int, host: str) -> None:
        self.enabled = port > 0
        if not self.enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge

        from idproxy.prometheus import ready_gauge, serve_metrics

        r = self.registry = CollectorRegistry()
        self.samples = Counter("idproxy_trainer_samples", "samples trained", registry=r)
        self.rate = Gauge("idproxy_trainer_samples_per_second", "last batch samples/s", registry=r)
        self.auc_all = Gauge("idproxy_trainer_auc_all", "windowed prequential AUC", registry=r)
        self.auc_new = Gauge("idproxy_trainer_auc_new", "windowed AUC on new items", registry=r)
        self.ckpt_at = time.time()
        age = Gauge("idproxy_trainer_checkpoint_age_seconds", "since last checkpoint", registry=r)
        age.set_function(lambda: time.time() - self.ckpt_at)
        self.lag = Gauge("idproxy_trainer_lag", "samples high watermark - position", registry=r)
        self.ready = ready_gauge("trainer", r)
        self.address = serve_metrics(r, port, host)

    def started(self) -> None:
        """Resumed and consuming: the trainer is ready."""
        if self.enabled:
            self.ready.set(1)

    def checkpointed(self) -> None:
        if self.enabled:
            self.ckpt_at = time.time()

    def observe(self, core: TrainerCore, consumer, partitions, n: int, seconds: float) -> None:
        """After a trained batch of ``n`` samples that took ``seconds``."""
        if not self.enabled:
            return
        self.samples.inc(n)
        self.rate.set(n / max(seconds, 1e-9))
        for gauge, m in ((self.auc_all, core.metrics_all), (self.auc_new, core.metrics_new)):
            if core.batches % 10 == 0:
                gauge.set(m.auc())
        lag = 0
        for tp in partitions:
            high = consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - consumer.position(tp))
        self.lag.set(lag)
