"""Hooks that measure a network while it trains: its activations, its gradients, the loss along the gradient.

Each probe samples chosen steps only and keeps its numbers on the device until :meth:`results` reads them, so a
probe costs nothing on the steps it skips beyond a Python call, and no host read between evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from bnlab.lab.train.loop import Hook, OptimizerStep

__all__ = ["ActivationProbe", "GradientProbe", "LossAlongDirection"]


class ActivationProbe(Hook):
    """Mean and standard deviation of the outputs of ``modules`` (by name) in the forward passes of the steps in
    ``steps``, over the batch and all features. Call :meth:`close` to remove its forward hooks."""

    def __init__(self, modules: Mapping[str, torch.nn.Module], steps: Collection[int]) -> None:
        self.steps = set(steps)
        self._on = 0  # the step being sampled, or 0
        self._stats: list[tuple[int, str, Tensor]] = []
        self._handles = [m.register_forward_hook(self._capture(name)) for name, m in modules.items()]

    def _capture(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: Any, output: Tensor) -> None:
            if self._on:
                y = output.detach().float()
                self._stats.append((self._on, name, torch.stack([y.mean(), y.std()])))
        return hook

    def start_step(self, step: int) -> None:
        self._on = step if step in self.steps else 0

    def after_step(self, event: OptimizerStep) -> None:
        self._on = 0  # forward passes after the update (a GAN's second network) are not this step's sample

    def results(self) -> list[dict[str, Any]]:
        """``{"step", "module", "mean", "std"}`` per sampled forward pass, in order."""
        return [{"step": s, "module": n, "mean": v[0].item(), "std": v[1].item()} for s, n, v in self._stats]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class GradientProbe(Hook):
    """The gradient norm of each parameter (by name) of the model updated at the steps in ``steps``, read before
    the optimizer moves the weights; ``name`` restricts it to one optimizer's updates (a GAN's generator)."""

    def __init__(self, steps: Collection[int], name: str | None = None) -> None:
        self.steps, self.name = set(steps), name
        self._norms: list[tuple[int, str, list[str], Tensor]] = []

    def before_step(self, event: OptimizerStep) -> None:
        if event.step not in self.steps or (self.name is not None and event.name != self.name):
            return
        named = [(n, p.grad) for n, p in event.model.named_parameters() if p.grad is not None]
        if named:
            norms = torch.stack([g.detach().float().norm() for _, g in named])
            self._norms.append((event.step, event.name, [n for n, _ in named], norms))

    def results(self) -> list[dict[str, Any]]:
        """``{"step", "optimizer", "norms": {parameter: ‖grad‖}}`` per sampled update."""
        return [{"step": s, "optimizer": o, "norms": dict(zip(names, v.tolist(), strict=True))}
                for s, o, names, v in self._norms]


class LossAlongDirection(Hook):
    """The loss after moving the weights along minus the gradient, relative to the loss before:
    L(w − α·g) / L(w) for each α in ``alphas``, on the step's own batch, at the steps in ``steps``.

    ``loss_fn(model_output, batch)`` computes the loss (e.g. cross-entropy against ``batch[1]``). The moved
    network is evaluated with :func:`torch.func.functional_call` on copies of the buffers, in the model's current
    mode (train mode: batch statistics), so neither the weights nor batch norm's running statistics change.
    Bjorck et al. (2018) and Santurkar et al. (2018) read the landscape this way.
    """

    def __init__(self, loss_fn: Callable[[Tensor, tuple[Tensor, ...]], Tensor], alphas: Sequence[float],
                 steps: Collection[int], name: str | None = None) -> None:
        self.loss_fn, self.alphas, self.steps, self.name = loss_fn, list(alphas), set(steps), name
        self._ratios: list[tuple[int, str, Tensor]] = []

    def before_step(self, event: OptimizerStep) -> None:
        if event.step not in self.steps or (self.name is not None and event.name != self.name):
            return
        model = event.model
        params = {n: p.detach() for n, p in model.named_parameters()}
        grads = {n: (p.grad.detach() if p.grad is not None else torch.zeros_like(p)) for n, p in
                 model.named_parameters()}
        buffers = dict(model.named_buffers())
        base = event.loss.detach()
        ratios = []
        with torch.no_grad():
            for alpha in self.alphas:
                moved = {n: params[n] - alpha * grads[n] for n in params}
                copies = {n: b.clone() for n, b in buffers.items()}
                out = torch.func.functional_call(model, {**moved, **copies}, (event.batch[0],))
                ratios.append(self.loss_fn(out, event.batch) / base)
        self._ratios.append((event.step, event.name, torch.stack(ratios)))

    def results(self) -> list[dict[str, Any]]:
        """``{"step", "optimizer", "alphas", "ratios"}`` per sampled update (a ratio may be inf or nan)."""
        return [{"step": s, "optimizer": o, "alphas": self.alphas, "ratios": v.tolist()} for s, o, v in self._ratios]
