"""`idproxy bench encoder`: throughput of the default encoder and the cost of the proxy path.

For text-only and image+text batches it times, on the same items and interleaved:

* the bare MLLM forward (``MultimodalEncoder``: vision tower + projector + LM, all layers);
* the full ``encode → features → proxies`` path (``ProxyService.run``).

Items are MovieLens titles; images are generated 224 px patterns (no dataset with images
installs offline). Reports the median over ``--repeats`` of items/s and the ratio
full/bare time (the overhead goal is < 5 %).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from idproxy.settings import Settings, tiny_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke test)")


def _images(n: int, size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(1, 8, 3)
        rgb = np.stack([np.sin(a * xx), np.cos(b * yy), np.sin(c * (xx + yy))], -1)
        out.append(Image.fromarray(((rgb + 1) * 127.5).astype("uint8")))
    return out


def _interleaved_medians(fns: list, repeats: int) -> list[float]:
    """Median seconds of each fn, timed in turn within every repeat (fair under load)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def run(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from idproxy.movielens import load_movielens
    from proxy_model.encoder import ItemContent
    from proxy_model.service import ProxyService

    console = Console()
    service = ProxyService.from_settings(tiny_profile(settings) if args.tiny else settings)
    encoder = service.featurizer.encoder
    data = load_movielens()
    texts = [data.item_text(i) for i in data.item_ids[: args.batch_size]]
    images = _images(args.batch_size, encoder.image_size)
    batches = {
        "text-only": [ItemContent(t) for t in texts],
        "image+text": [ItemContent(t, im) for t, im in zip(texts, images, strict=True)],
    }
    if encoder.vision is None:
        del batches["image+text"]
    results = {}
    with torch.no_grad():
        for name, items in batches.items():
            service.run(items)  # warm-up
            bare, full = _interleaved_medians(
                [lambda items=items: encoder(items), lambda items=items: service.run(items)],
                args.repeats,
            )
            results[name] = {
                "bare_items_per_s": len(items) / bare,
                "full_items_per_s": len(items) / full,
                "full_over_bare": full / bare,
            }

    table = Table(
        title=f"Encoder {encoder.name} on {service.featurizer.encoder.device}, "
        f"batch {args.batch_size}, median of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    for col in ("items", "bare MLLM items/s", "encode→features→proxies items/s", "time ratio"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['bare_items_per_s']:.2f}",
            f"{r['full_items_per_s']:.2f}",
            f"{r['full_over_bare']:.3f}",
        )
    console.print(table)
    summary = {
        "bench": "encoder",
        "encoder": encoder.name,
        "batch_size": args.batch_size,
        **{f"{name}_{k}": round(v, 4) for name, r in results.items() for k, v in r.items()},
    }
    print(json.dumps(summary))
    return 0
