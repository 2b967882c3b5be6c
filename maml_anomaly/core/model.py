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
            x = _batched_linear(x, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"])  # (B, Q, out)
            if i < last:
                x = torch.relu(x)
        return x

    def batched_mse_grads(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, weight: Tensor | None
    ) -> dict[str, Tensor]:
        """Per-task gradients of ``masked_mse`` (output 0) by hand-written backpropagation.

        params with leading B, x (B, K, n_inputs), y and weight (B, K). Built from plain
        differentiable ops, so autograd can go through it for second-order MAML; it costs
        about half the operations of ``autograd.grad(create_graph=True)`` on these tiny layers.
        """
        last = len(self.layers) - 1
        acts = [x]  # input of each layer, (B, K, fan_in)
        h = x
        for i in range(last + 1):
            h = _batched_linear(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"])  # (B, K, out)
            if i < last:
                h = torch.relu(h)
                acts.append(h)
        err = h[..., 0] - y  # (B, K)
        if weight is None:
            d = err * (2.0 / err.shape[-1])
        else:
            d = err * weight * (2.0 / weight.sum(-1, keepdim=True).clamp_min(1e-12))
        d = d.unsqueeze(-1)  # (B, K, 1): dLoss/dOutput
        if self.n_outputs > 1:
            d = torch.nn.functional.pad(d, (0, self.n_outputs - 1))  # other outputs are not scored
        grads: dict[str, Tensor] = {}
        for i in range(last, -1, -1):
            a = acts[i]  # (B, K, in)
            grads[f"layers.{i}.weight"] = torch.bmm(d.transpose(-1, -2), a)  # (B, out, in)
            grads[f"layers.{i}.bias"] = d.sum(-2)  # (B, out)
            if i > 0:
                w = params[f"layers.{i}.weight"]  # (B, out, in)
                shared = _shared(w)
                d = (d @ shared if shared is not None else torch.bmm(d, w)) * (a > 0)  # (B, K, in), through ReLU
        return grads


def _shared(t: Tensor) -> Tensor | None:
    """The one tensor behind a per-task tensor that is a view expanded over tasks (stride 0), else None."""
    return t[0] if t.dim() >= 2 and t.stride(0) == 0 else None


def _batched_linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """x (B, K, in), w (B, out, in), b (B, out) -> (B, K, out).

    Before the first inner step every task still has the same weights (an expanded view): one
    large matrix product over all B * K rows then runs several times faster than B tiny ones.
    """
    w0, b0 = _shared(w), _shared(b)
    if w0 is not None and b0 is not None:
        return torch.nn.functional.linear(x, w0, b0)
    return torch.baddbmm(b.unsqueeze(-2), x, w.transpose(-1, -2))


def init_params(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's parameters, keyed by their names."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}
