"""Probes that evaluate a network at weights other than its own, on the step's batch, without moving it.

- :class:`LandscapeProbe`: the loss and the gradient along the gradient direction, L(w − η·g) and
  ‖∇L(w − η·g) − g‖₂ for a grid of step sizes η (Santurkar et al. 2018, §3.1, Figure 4: loss variation, gradient
  predictiveness and the "effective" β-smoothness);
- :class:`CovariateShiftProbe`: internal covariate shift measured through gradients (their Definition 2.1): each
  layer's gradient before and after the layers below it take their update.

Both evaluate the network with :func:`torch.func.functional_call` on copies of its buffers, in the model's current
mode (train mode: batch statistics), so neither the weights nor batch norm's running statistics change, and both
take the gradient with :func:`torch.autograd.grad` on fresh leaf tensors, so the ``.grad`` the optimizer is about
to apply is left alone. The network must be deterministic in that mode (no dropout, no injected noise): two
evaluations at the same weights must give the same loss, or the differences measured would be the noise's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from bnlab.lab.train.loop import Hook, OptimizerStep
from bnlab.lab.train.probes import probe_pass

__all__ = ["CovariateShiftProbe", "LandscapeProbe", "loss_and_gradients"]

LossFn = Callable[[Tensor, tuple[Tensor, ...]], Tensor]


def loss_and_gradients(model: torch.nn.Module, params: Mapping[str, Tensor], batch: tuple[Tensor, ...],
                       loss_fn: LossFn, wrt: Collection[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of ``model`` with its parameters replaced by ``params`` (every parameter, by name) on ``batch``
    (input ``batch[0]``), and its gradient with respect to the parameters named in ``wrt``.

    The model's own parameters, gradients and buffers are untouched: the buffers are copied (a train-mode batch
    norm updates the copies' running statistics). A parameter the loss does not reach has a zero gradient. The
    pass runs inside :func:`~bnlab.lab.train.probes.probe_pass`, so an activation probe does not take it for the
    training step's.
    """
    leaves = {n: (t.detach().clone().requires_grad_(True) if n in wrt else t.detach()) for n, t in params.items()}
    copies = {n: b.clone() for n, b in model.named_buffers()}
    with torch.enable_grad(), probe_pass():
        loss = loss_fn(torch.func.functional_call(model, {**leaves, **copies}, (batch[0],)), batch)
        names = [n for n in leaves if n in wrt]
        grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return loss.detach(), {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in
                           zip(names, grads, strict=True)}


def _sampled(probe: Any, event: OptimizerStep) -> bool:
    return event.step in probe.steps and (probe.name is None or event.name == probe.name)


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class LandscapeProbe(Hook):
    """The landscape along the gradient at the steps in ``steps``, before the update, on the step's own batch.

    With ``w`` the weights (every parameter that requires a gradient) and ``g`` the gradient in ``.grad`` (what
    the optimizer is about to apply), for each step size η in ``etas``: the loss ``L(w − η·g)`` and the change of
    the gradient ``‖∇L(w − η·g) − g‖₂`` (over all those parameters at once). From them: the loss variation (the
    range of L over η), the gradient predictiveness (the range of the change) and the effective β-smoothness,
    ``max_η ‖∇L(w − η·g) − g‖₂ / ‖η·g‖₂``. ``loss_fn(output, batch)`` computes the loss; ``name`` restricts the
    probe to one optimizer's updates. Costs one forward and backward pass per η at a sampled step.
    """

    def __init__(self, loss_fn: LossFn, etas: Sequence[float], steps: Collection[int], name: str | None = None) -> None:
        if not etas or any(not eta > 0 for eta in etas):
            raise ValueError(f"the step sizes must be positive, at least one, got {list(etas)}")
        self.loss_fn, self.etas, self.steps, self.name = loss_fn, [float(e) for e in etas], set(steps), name
        self._rows: list[tuple[int, str, Tensor]] = []  # step, optimizer, (2 + 2·len(etas),), on the device

    def before_step(self, event: OptimizerStep) -> None:
        if not _sampled(self, event):
            return
        named = [(n, p) for n, p in event.model.named_parameters() if p.requires_grad]
        params = dict(event.model.named_parameters())
        g = {n: (p.grad.detach() if p.grad is not None else torch.zeros_like(p)) for n, p in named}
        g_flat = _flat(list(g.values()))
        losses, changes = [], []
        for eta in self.etas:
            moved = {**params, **{n: p.detach() - eta * g[n] for n, p in named}}
            loss, grads = loss_and_gradients(event.model, moved, event.batch, self.loss_fn, g)
            losses.append(loss)
            changes.append((_flat([grads[n] for n in g]) - g_flat).norm())
        # In the model's dtype: a float64 network is measured in float64.
        row = torch.stack([event.loss.detach().to(g_flat.dtype), g_flat.norm(), *losses, *changes])
        self._rows.append((event.step, event.name, row))

    def results(self) -> list[dict[str, Any]]:
        """Per sampled update: ``{"step", "optimizer", "etas", "loss": L(w), "grad_norm": ‖g‖₂, "losses":
        [L(w − η·g) per η], "grad_changes": [‖∇L(w − η·g) − g‖₂ per η]}`` (a value may be inf or nan)."""
        k = len(self.etas)
        out = []
        for step, name, row in self._rows:
            values = row.tolist()
            out.append({"step": step, "optimizer": name, "etas": list(self.etas), "loss": values[0],
                        "grad_norm": values[1], "losses": values[2:2 + k], "grad_changes": values[2 + k:]})
        return out


class CovariateShiftProbe(Hook):
    """Internal covariate shift measured through gradients (Santurkar et al. 2018, Definition 2.1).

    ``layers`` lists the network's layers in forward order, each as the names of its parameters, the first being
    the weight whose gradient is compared (a convolution's weight, then its bias or its batch norm's γ and β). At
    each step in ``steps``, on the step's batch, for each layer i after the first:

    - G_i = ∇_{W_i} L(W_1, …, W_k): the gradient the optimizer applies (read from ``.grad`` before the update);
    - G'_i = ∇_{W_i} L(W_1', …, W_{i−1}', W_i, …, W_k): the same gradient after every parameter of the layers
      below i took its update (W' = the values after ``optimizer.step()``, momentum and all), the layers from i
      up keeping their values before it.

    It records ‖G_i − G'_i‖₂, ‖G_i‖₂ and cos(G_i, G'_i). Parameters in no layer keep their values before the
    update. Costs one forward and backward pass per layer at a sampled step.
    """

    def __init__(self, loss_fn: LossFn, layers: Sequence[Sequence[str]], steps: Collection[int],
                 name: str | None = None) -> None:
        names = [n for layer in layers for n in layer]
        if len(layers) < 2 or any(not layer for layer in layers) or len(set(names)) != len(names):
            raise ValueError("give at least two layers, each a non-empty list of parameter names, no name twice")
        self.loss_fn, self.layers, self.steps, self.name = loss_fn, [list(layer) for layer in layers], set(steps), name
        self._before: dict[str, Tensor] | None = None  # every parameter before the update, at a sampled step
        self._grads: list[Tensor] = []  # G_i for i ≥ 2, before the update
        self._rows: list[tuple[int, str, Tensor]] = []  # step, optimizer, (3, layers − 1) on the device

    def before_step(self, event: OptimizerStep) -> None:
        if not _sampled(self, event):
            return
        params = dict(event.model.named_parameters())
        missing = [n for layer in self.layers for n in layer if n not in params]
        if missing:
            raise ValueError(f"the model has no parameter named {missing[0]!r}; its parameters are "
                             f"{', '.join(params)}")
        self._before = {n: p.detach().clone() for n, p in params.items()}
        weights = [params[layer[0]] for layer in self.layers[1:]]
        self._grads = [(w.grad.detach().clone() if w.grad is not None else torch.zeros_like(w)) for w in weights]

    def after_step(self, event: OptimizerStep) -> None:
        if self._before is None:
            return
        before, self._before = self._before, None
        after = {n: p.detach() for n, p in event.model.named_parameters()}
        rows = []
        for i, g in enumerate(self._grads, start=1):
            below = {n for layer in self.layers[:i] for n in layer}
            mixed = {n: (after[n] if n in below else before[n]) for n in before}
            weight = self.layers[i][0]
            _, grads = loss_and_gradients(event.model, mixed, event.batch, self.loss_fn, {weight})
            g2 = grads[weight].reshape(-1)
            g1 = g.reshape(-1)
            # cos is 0 when a gradient is exactly zero (nothing to compare), not a division by zero.
            norms = g1.norm() * g2.norm()
            cosine = torch.where(norms > 0, (g1 @ g2) / norms.clamp_min(torch.finfo(g1.dtype).tiny),
                                 torch.zeros_like(norms))
            rows.append(torch.stack([(g1 - g2).norm(), g1.norm(), cosine]))
        self._rows.append((event.step, event.name, torch.stack(rows, dim=1)))
        self._grads = []

    def results(self) -> list[dict[str, Any]]:
        """Per sampled update: ``{"step", "optimizer", "layers": [2, …, k], "l2": [‖G_i − G'_i‖₂], "grad_norm":
        [‖G_i‖₂], "cosine": [cos(G_i, G'_i)]}``, one value per layer from the second (may be inf or nan)."""
        out = []
        for step, name, rows in self._rows:
            l2, norm, cosine = rows.tolist()
            out.append({"step": step, "optimizer": name, "layers": list(range(2, len(self.layers) + 1)), "l2": l2,
                        "grad_norm": norm, "cosine": cosine})
        return out
