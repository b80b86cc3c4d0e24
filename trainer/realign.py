"""Stage-1 re-alignment against a drifting ID table, with a guardrail.

The ranker keeps learning, so its item-ID table drifts and the Stage-1 targets go stale
(paper §2.2: "learning against static targets in continuously updated systems"). A
re-alignment run:

1. takes a snapshot of the ID table and its per-item update counts, keeps ids with at least
   τ updates and ℓ2-normalises them (§3.1.1);
2. refits φ **warm-started** from the current version on the cached features z (g and M are
   part of the encoder version and stay fixed, so no item is re-encoded; a run that also
   changes M — LoRA — creates a new encoder version, whose features must be backfilled by
   re-encoding every item through the workers before its proxies can be published);
3. scores the current and the candidate φ on held-out ids against the *new* targets;
4. accepts the candidate only if held-out alignment did not regress: recall@10 of each
   held-out item's own ID embedding among all targets no lower than the current version's
   minus ``tolerance``. Recall is the guardrail because PAL (eq. 1) is a ranking objective
   over in-batch negatives; the mean cosine to the own ID embedding is reported but not
   gated (PAL does not optimise absolute cosine, and on a few dozen held-out ids it is
   noisy: a candidate that lifted recall@10 from 0.06 to 0.31 lowered the cosine from
   0.08 to −0.01 in tests/realign/test_realign_job.py). The cosine only breaks ties: a
   candidate whose recall@10 is no higher than the current one's must not lower the
   cosine either (on 16 held-out ids recall@10 moves in steps of 1/16, so a shuffled-target
   candidate can tie it; replacing the live version then brings churn and no gain).
   Otherwise it keeps the current version and says why.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from proxy_model.alignment import preprocess_id_embeddings
from proxy_model.heads import CoarseHead
from proxy_model.stage1 import AlignmentReport, Stage1Config, alignment_report, fit_coarse_head


def keep_continuity(candidate: CoarseHead, current: CoarseHead, z: torch.Tensor) -> torch.Tensor:
    """Rotates ``candidate`` in place onto ``current``'s basis; returns the rotation R [d, d].

    A live ranker has learned its fusion maps on the current proxies, so a new coarse
    version should not swap every item's p_coarse for a differently oriented vector. R is
    the orthogonal Procrustes solution argmin_R ‖φ_new(z) R − φ_old(z)‖_F over the items'
    features z [N, D] (R = U Vᵀ from the SVD of φ_new(z)ᵀ φ_old(z)); it is folded into the
    candidate's last linear layer. A rotation keeps the geometry among the new proxies (their
    norms and mutual cosines, so what the refit learned about which items are alike) and
    changes only their orientation, back to the one the live ranker has learned; each
    p_coarse moves as little as a rotation allows.
    """
    with torch.no_grad():
        new, old = candidate(z), current(z)
        u, _, vh = torch.linalg.svd(new.T @ old)
        rotation = u @ vh
        last = candidate.mlp[-1]
        last.weight.copy_(rotation.T @ last.weight)
        last.bias.copy_(last.bias @ rotation)
    return rotation


@dataclass(frozen=True)
class RealignOutcome:
    """The guardrail's decision, both reports and the candidate head."""

    accepted: bool
    reason: str
    current: AlignmentReport
    candidate_report: AlignmentReport
    candidate: CoarseHead
    n_targets: int


def realign_coarse_head(
    z: torch.Tensor,
    id_table: torch.Tensor,
    update_counts: torch.Tensor,
    current: CoarseHead,
    config: Stage1Config,
    *,
    min_updates: int,
    holdout_fraction: float = 0.2,
    tolerance: float = 0.0,
    shuffle_targets: bool = False,
    progress: bool = False,
) -> RealignOutcome:
    """z [N, D] cached features, id_table [N, d], update_counts [N] (rows = the same items).

    ``shuffle_targets`` deliberately trains the candidate on permuted targets (a known-bad
    candidate, used to check that the guardrail rejects it).
    """
    kept, targets = preprocess_id_embeddings(id_table, update_counts, min_updates)
    if len(kept) < 10:
        raise ValueError(f"only {len(kept)} ids have >= {min_updates} updates: too few to refit")
    perm = torch.randperm(len(kept), generator=torch.Generator().manual_seed(config.seed))
    n_hold = max(2, int(round(holdout_fraction * len(kept))))
    hold, train = perm[:n_hold], perm[n_hold:]
    train_targets = targets[train]
    if shuffle_targets:
        shuffled = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
        train_targets = train_targets[shuffled]

    candidate = copy.deepcopy(current)
    fit_coarse_head(candidate, z[kept[train]], train_targets, config, progress=progress)
    with torch.no_grad():
        old = alignment_report(current(z[kept[hold]]), targets, hold)
        new = alignment_report(candidate(z[kept[hold]]), targets, hold)
    regressed = []
    if new.recall_at_k < old.recall_at_k - tolerance:
        regressed.append(f"recall@10 {new.recall_at_k:.4f} < {old.recall_at_k:.4f}")
    elif new.recall_at_k <= old.recall_at_k and new.mean_cosine < old.mean_cosine:
        regressed.append(
            f"recall@10 not higher ({new.recall_at_k:.4f}) and cosine"
            f" {new.mean_cosine:.4f} < {old.mean_cosine:.4f}"
        )
    reason = (
        "held-out alignment regressed: " + ", ".join(regressed) if regressed else "no regression"
    )
    return RealignOutcome(
        accepted=not regressed,
        reason=reason,
        current=old,
        candidate_report=new,
        candidate=candidate,
        n_targets=len(kept),
    )
