"""The rankers' optimiser: row-sparse Adam on ID tables, Adam on everything else.

Dense Adam on an embedding table moves every row at every step: a row that is not in the
batch has a zero gradient but non-zero momentum, so an item nobody clicked for a while
keeps drifting. ``torch.optim.SparseAdam`` ("lazy Adam") updates only the rows present in
the batch's sparse gradient. Tables produce sparse gradients
(``F.embedding(..., sparse=True)``) and are named by the constructor's ``table_params``.

Checkpoints need one state dict: ``state_dict()`` numbers the parameters of the dense
optimiser first and the sparse one's after them, exactly like one torch optimiser with
the groups of both (``param_groups`` concatenates them), so
``trainer.checkpoint.optimizer_tensors`` works unchanged.

>>> import torch
>>> from torch import nn
>>> table = nn.Embedding(10, 4, sparse=True)
>>> head = nn.Linear(4, 1)
>>> opt = RowSparseAdam([{"params": [head.weight, head.bias]}], [table.weight], lr=0.1)
>>> before = table.weight.detach().clone()
>>> head(table(torch.tensor([1, 2]))).sum().backward()
>>> opt.step()
>>> moved = (table.weight.detach() != before).any(dim=1)
>>> moved.nonzero().flatten().tolist()  # only the rows in the batch moved
[1, 2]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class RowSparseAdam:
    """Adam over ``dense_groups`` + SparseAdam over ``table_params`` (same lr and betas)."""

    def __init__(self, dense_groups: list[dict], table_params: Iterable[torch.Tensor], lr: float):
        self.dense = torch.optim.Adam(dense_groups, lr=lr)
        self.sparse = torch.optim.SparseAdam(list(table_params), lr=lr)
        self.optimizers = (self.dense, self.sparse)

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def replace_param(self, old: torch.Tensor, new: torch.Tensor) -> None:
        """A growing table swapped ``old`` for ``new`` (more rows): moves and pads its state."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
            state = opt.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    pad = state[key].new_zeros(new.shape[0] - old.shape[0], *old.shape[1:])
                    state[key] = torch.cat([state[key], pad])
                opt.state[new] = state

    def state_dict(self) -> dict:
        dense, sparse = self.dense.state_dict(), self.sparse.state_dict()
        offset = sum(len(g["params"]) for g in dense["param_groups"])
        state = dict(dense["state"])
        state.update({k + offset: v for k, v in sparse["state"].items()})
        groups = dense["param_groups"] + [
            {**g, "params": [p + offset for p in g["params"]]} for g in sparse["param_groups"]
        ]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        n_dense = len(self.dense.param_groups)
        groups = state_dict["param_groups"]
        offset = sum(len(g["params"]) for g in groups[:n_dense])
        state = {int(k): v for k, v in state_dict["state"].items()}
        self.dense.load_state_dict(
            {
                "state": {k: v for k, v in state.items() if k < offset},
                "param_groups": groups[:n_dense],
            }
        )
        self.sparse.load_state_dict(
            {  # SparseAdam counts steps in a Python int (checkpoints hold a tensor)
                "state": {
                    k - offset: {**v, "step": int(v["step"])}
                    for k, v in state.items()
                    if k >= offset
                },
                "param_groups": [
                    {**g, "params": [p - offset for p in g["params"]]} for g in groups[n_dense:]
                ],
            }
        )
