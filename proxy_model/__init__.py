"""The IDProxy model (paper §3.1–3.2), pure PyTorch/transformers, no Kafka.

The path is ``encode → features → proxies``:

* :mod:`proxy_model.encoder` runs the MLLM M once per item and returns token-level hidden
  states of the chosen layers;
* :mod:`proxy_model.features` pools them with g into cacheable per-item features
  (``z`` for Stage 1, ``z_groups`` for Stage 2);
* :mod:`proxy_model.heads` maps features to ``p_coarse`` (Stage 1) and ``p_fine`` (Stage 2)
  without running the MLLM again.
"""
