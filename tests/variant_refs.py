"""Float64 references of the batch-norm variants, written from their definitions (not from bnlab's code), and
one way of judging a module's training step against them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tolerances import KERNEL_FLOOR, RTOL


@dataclass
class Step:
    """One training step: output, ∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β and the running statistics after it."""

    y: Tensor
    dx: Tensor
    dweight: Tensor
    dbias: Tensor
    running_mean: Tensor
    running_var: Tensor


def _dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _view(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def renorm(x: Tensor, rm: Tensor, rv: Tensor, w: Tensor, b: Tensor, eps: float, momentum: float, r_max: float,
           d_max: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, new running mean, new running var) of Ioffe's Algorithm 1, r and d held constant for backward."""
    mu, var = x.mean(_dims(x)), x.var(_dims(x), unbiased=False)
    sigma_b, sigma = torch.sqrt(var + eps), torch.sqrt(rv + eps)
    r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max).detach()
    d = torch.clamp((mu - rm) / sigma, -d_max, d_max).detach()
    y = _view(w, x) * ((x - _view(mu, x)) / _view(sigma_b, x) * _view(r, x) + _view(d, x)) + _view(b, x)
    m = x.numel() // x.shape[1]
    return y, (1 - momentum) * rm + momentum * mu.detach(), (1 - momentum) * rv + momentum * var.detach() * m / (m - 1)


def ghost(x: Tensor, rm: Tensor, rv: Tensor, w: Tensor, b: Tensor, eps: float, momentum: float,
          virtual: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each chunk of ``virtual`` samples normalized alone; running: mean of chunk means and unbiased variances."""
    outs, means, variances = [], [], []
    for chunk in torch.split(x, virtual):
        mu, var = chunk.mean(_dims(chunk)), chunk.var(_dims(chunk), unbiased=False)
        outs.append((chunk - _view(mu, chunk)) / torch.sqrt(_view(var, chunk) + eps))
        means.append(mu.detach())
        variances.append(chunk.detach().var(_dims(chunk), unbiased=True))
    y = _view(w, x) * torch.cat(outs) + _view(b, x)
    mean, var = torch.stack(means).mean(0), torch.stack(variances).mean(0)
    return y, (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * var


def masked(x: Tensor, rm: Tensor, rv: Tensor, w: Tensor, b: Tensor, eps: float, momentum: float,
           mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Statistics of the valid positions (x[n, :, l] where mask[n, l]) normalize every position."""
    valid = x.permute(1, 0, 2)[:, mask]  # (C, number of valid positions)
    mu, var = valid.mean(1), valid.var(1, unbiased=False)
    y = _view(w, x) * (x - _view(mu, x)) / torch.sqrt(_view(var, x) + eps) + _view(b, x)
    m = valid.shape[1]
    return y, (1 - momentum) * rm + momentum * mu.detach(), (1 - momentum) * rv + momentum * var.detach() * m / (m - 1)


def reference_step(fn: Callable[..., tuple[Tensor, Tensor, Tensor]], x: Tensor, grad_y: Tensor,
                   module: torch.nn.Module, momentum: float | None = None, **kwargs: object) -> Step:
    """Run ``fn`` in float64 on the module's parameters and statistics (before its step) and differentiate it.

    ``momentum``: the averaging factor of this step, default the module's (give 1/t for ``momentum=None``)."""
    x64 = x.detach().double().requires_grad_()
    w = module.weight.detach().double().requires_grad_()
    b = module.bias.detach().double().requires_grad_()
    y, rm, rv = fn(x64, module.running_mean.double(), module.running_var.double(), w, b, module.eps,
                   module.momentum if momentum is None else momentum, **kwargs)
    y.backward(grad_y.double())
    assert x64.grad is not None and w.grad is not None and b.grad is not None
    return Step(y.detach(), x64.grad, w.grad, b.grad, rm, rv)


def module_step(module: torch.nn.Module, x: Tensor, grad_y: Tensor, *args: object) -> Step:
    x = x.detach().clone().requires_grad_()
    module.zero_grad()
    y = module(x, *args)
    y.backward(grad_y)
    assert x.grad is not None
    return Step(y.detach(), x.grad, module.weight.grad, module.bias.grad, module.running_mean.clone(),
                module.running_var.clone())


def assert_step_close(ours: Step, ref: Step, dtype: torch.dtype = torch.float32, what: str = "") -> None:
    """Every field within the suite's kernel tolerance of the float64 reference (relative to its scale)."""
    for field in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
        o, r = getattr(ours, field), getattr(ref, field)
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(o.double(), r, rtol=RTOL[dtype], atol=KERNEL_FLOOR[dtype] * scale,
                                   msg=lambda m, f=field: f"{what} {f}: {m}")


INF = math.inf
