"""The CTR ranker, its training (offline and online) and the Stage-1 alignment jobs."""
