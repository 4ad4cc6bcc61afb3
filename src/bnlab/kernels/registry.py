"""The backend registry: which backends exist, which can run where, and what ``"auto"`` means.

``BNLAB_BACKEND`` is read here and nowhere else. It replaces ``"auto"`` (never an explicit choice), so a whole
program can be switched to one backend without editing code: ``BNLAB_BACKEND=reference python train.py``.
"""

from __future__ import annotations

import os

import torch

from bnlab.kernels.base import Backend

ENV_VAR = "BNLAB_BACKEND"
AUTO = "auto"

_BACKENDS: dict[str, Backend] = {}
# Availability depends only on the device type and dtype, so answers are kept per (name, env, type, dtype).
_RESOLVED: dict[tuple[str, str, str, torch.dtype], Backend] = {}
# "auto"'s order of the available backends per (device type, dtype), for the size-aware choice.
_ORDER: dict[tuple[str, torch.dtype], list[Backend]] = {}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run for this device and dtype; the message says why."""


def register(backend: Backend) -> Backend:
    """Add a backend under ``backend.name``; registering a name twice is a programming error."""
    if not backend.name or backend.name == AUTO:
        raise ValueError(f"a backend needs a name other than {AUTO!r}, got {backend.name!r}")
    if backend.name in _BACKENDS:
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    _RESOLVED.clear()
    _ORDER.clear()
    return backend


def backend_names() -> list[str]:
    """Every registered backend, whether or not it can run on this machine."""
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown batch-norm backend {name!r}; choose one of {[AUTO, *backend_names()]}"
        ) from None


def check_backend_name(name: str) -> str:
    """Validate a backend name given to a module or function (``"auto"`` or a registered name)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string such as 'auto' or 'native', got {type(name).__name__}")
    if name != AUTO:
        get_backend(name)
    return name


def _as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Backends that can run on ``device`` for inputs of ``dtype``, the one ``"auto"`` picks first."""
    dev = _as_device(device)
    usable = [b for b in _BACKENDS.values() if b.unavailable_reason(dev, dtype) is None]
    usable.sort(key=lambda b: (-b.priority(dev, dtype), b.name))
    return [b.name for b in usable]


def resolve(name: str, device: torch.device, dtype: torch.dtype, numel: int | None = None,
            training: bool = True, fused: bool = False, channels_last: bool = False) -> Backend:
    """The backend that runs a call: ``name`` itself, or for ``"auto"`` ``$BNLAB_BACKEND`` or the best one.

    With ``numel`` (the input's element count) ``"auto"`` also honours each backend's
    :meth:`~bnlab.kernels.base.Backend.auto_min_numel` for that size and mode (``fused``: a call of
    :mod:`bnlab.fused` that adds a residual or applies an activation; ``channels_last``: the input's memory
    format), passing over a backend that is only faster on larger layers or on other kinds of call; an explicit
    name or ``$BNLAB_BACKEND`` is never second-guessed.
    """
    env = env_override() or ""
    if torch.compiler.is_compiling():
        # Answered outside the graph: availability checks may import or even build kernels, which a tracer
        # cannot follow. The size-aware choice is left out here, since shapes may be symbolic while tracing.
        return _BACKENDS[_resolve_while_tracing(name, env, device.type, dtype)]
    key = (name, env, device.type, dtype)
    backend = _RESOLVED.get(key)
    if backend is None:
        backend = _RESOLVED[key] = _resolve(*key)
    if numel is not None and name == AUTO and not env:
        backend = _by_size(backend, device, dtype, numel, training, fused, channels_last)
    return backend


def env_override() -> str | None:
    """The backend ``$BNLAB_BACKEND`` names in place of ``"auto"``, or None (this is the one place it is read)."""
    env = os.environ.get(ENV_VAR, "")
    return env if env and env != AUTO else None


@torch.compiler.assume_constant_result
def _resolve_while_tracing(name: str, env: str, device_type: str, dtype: torch.dtype) -> str:
    """The backend's name, computed eagerly when torch.compile reaches it and kept as a constant of the graph."""
    return _resolve(name, env, device_type, dtype).name


def _by_size(best: Backend, device: torch.device, dtype: torch.dtype, numel: int, training: bool,
             fused: bool, channels_last: bool) -> Backend:
    if numel >= best.auto_min_numel(device, dtype, training, fused, channels_last):
        return best
    order = _ORDER.get((device.type, dtype))
    if order is None:
        order = _ORDER[(device.type, dtype)] = [_BACKENDS[n] for n in available_backends(device, dtype)]
    for candidate in order:  # the next ones in "auto"'s order
        if numel >= candidate.auto_min_numel(device, dtype, training, fused, channels_last):
            return candidate
    return best


def _resolve(name: str, env: str, device_type: str, dtype: torch.dtype) -> Backend:
    source = "backend"
    if name == AUTO and env:
        name, source = env, f"${ENV_VAR}"
    device = torch.device(device_type)
    if name == AUTO:
        names = available_backends(device, dtype)
        if not names:
            raise BackendUnavailableError(f"no batch-norm backend can run on {device_type} for {dtype}")
        return _BACKENDS[names[0]]
    if name not in _BACKENDS:
        raise ValueError(f"unknown batch-norm backend {name!r} (from {source}); "
                         f"choose one of {[AUTO, *backend_names()]}")
    backend = _BACKENDS[name]
    reason = backend.unavailable_reason(device, dtype)
    if reason is not None:
        raise BackendUnavailableError(
            f"batch-norm backend {name!r} (from {source}) cannot run on {device_type} for {dtype}: {reason}; "
            f"available here: {available_backends(device, dtype)}"
        )
    return backend
