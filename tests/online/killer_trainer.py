"""An id-only online trainer that kills its own process (``os._exit``) when it trains a
batch holding the sample key ``KILL_SAMPLE``, or caches the content of the item ``killer``: what a
native crash in a kernel or the OOM killer does. The crash-loop quarantine test runs it again and again on the same state folder.

``python -m tests.online.killer_trainer STATE_DIR IDLE_EXIT_S`` (settings and broker from
the ``IDPROXY_*`` environment, as for ``idproxy trainer``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

KILL_CODE = 87
KILL_SAMPLE = 4242  # a sample key
KILL_ITEM = "killer"


def main() -> int:
    from idproxy.settings import load_settings
    from streams.broker import external_broker
    from trainer.item_cache import ItemCache
    from trainer.online import OnlineTrainer
    from trainer.online_core import TrainerCore

    train, put_features = TrainerCore._train, ItemCache.put_features

    def killing_train(self, messages, decoded):
        if KILL_SAMPLE in decoded.keys:
            print(f"killing myself on a batch of {len(decoded)}", flush=True)
            os._exit(KILL_CODE)
        return train(self, messages, decoded)

    def killing_put_features(self, item_id, *args, **kwargs):
        if item_id == KILL_ITEM:
            print("killing myself on an item's content", flush=True)
            os._exit(KILL_CODE)
        return put_features(self, item_id, *args, **kwargs)

    TrainerCore._train = killing_train
    ItemCache.put_features = killing_put_features

    state_dir, idle_exit_s = Path(sys.argv[1]), float(sys.argv[2])
    settings = load_settings()
    trainer = OnlineTrainer(
        settings,
        external_broker(settings),
        variant="id-only",
        state_dir=state_dir,
        group="killer-trainer",
        reproxy=False,
    )
    print("ready", flush=True)
    summary = trainer.run(idle_exit_s=idle_exit_s)
    print(f"stopped: {trainer.dlq.count} dead letters", flush=True)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
