"""The forecaster network: a small ReLU MLP, usable one model at a time or batched over tasks."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Forecaster(nn.Module):
    """MLP n_inputs -> hidden... -> n_outputs with ReLU between layers (MAML's 40-40 by default).

    Parameters are named ``layers.{i}.weight`` (out, in) and ``layers.{i}.bias`` (out,), so a
    ``Params`` dict from ``init_params`` can be saved, loaded and adapted without the module.
    """

    def __init__(self, n_inputs: int, hidden: tuple[int, ...] = (40, 40), n_outputs: int = 1):
        super().__init__()
        self.n_inputs = int(n_inputs)
        self.hidden = tuple(int(h) for h in hidden)
        self.n_outputs = int(n_outputs)
        sizes = (self.n_inputs, *self.hidden, self.n_outputs)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """(..., n_inputs) -> (..., n_outputs)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x

    def batched_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """One set of weights per task: params with a leading B, x (B, Q, n_inputs) -> (B, Q, n_outputs).

        Plain batched matmuls: cheaper per call than vmap over functional_call, which matters
        because the inner loop is dominated by per-operation overhead on these tiny layers.
        """
        last = len(self.layers) - 1
        for i in range(last + 1):
            w = params[f"layers.{i}.weight"]  # (B, out, in)
            b = params[f"layers.{i}.bias"]  # (B, out)
            x = torch.baddbmm(b.unsqueeze(-2), x, w.transpose(-1, -2))  # (B, Q, out)
            if i < last:
                x = torch.relu(x)
        return x


def init_params(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's parameters, keyed by their names."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}
