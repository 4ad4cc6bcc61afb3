"""The backend registry: which backends exist, which can run where, and what ``"auto"`` means.

``BNLAB_BACKEND`` is read here and nowhere else. It replaces ``"auto"`` (never an explicit choice), so a whole
program can be switched to one backend without editing code: ``BNLAB_BACKEND=reference python train.py``.

Answers are cached per everything they depend on: the name asked for, the device type, the dtype, and the values of
``BNLAB_BACKEND`` and of every environment variable a backend declares its availability reads
(:attr:`~bnlab.kernels.base.Backend.environment`, e.g. ``TRITON_INTERPRET``). :func:`clear_cache` forgets them,
for when something else availability depends on changes (a compiler installed while the process runs).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor

from bnlab._shapes import memory_format_of
from bnlab.kernels.base import Backend

ENV_VAR = "BNLAB_BACKEND"
AUTO = "auto"

_BACKENDS: dict[str, Backend] = {}
# The environment variables answers depend on: BNLAB_BACKEND, then those the backends declare.
_WATCHED: tuple[str, ...] = (ENV_VAR,)
# Answers per (name, device type, dtype, values of the watched variables), and whole answers of resolve() per call
# kind (the same plus size, mode and layout): one dict lookup on the hot path.
_RESOLVED: dict[tuple[object, ...], Backend] = {}
_RESOLVED_MAX = 4096  # sizes vary with batch size and sequence length: forget everything rather than grow forever
# "auto"'s order of the available backends per (device type, dtype, watched values), for the size-aware choice.
_ORDER: dict[tuple[object, ...], list[Backend]] = {}
# Every name a backend may be given, "auto" first, as small integers (modules carry them into compiled graphs as
# tensors, where a string would become a guard per value).
_NAMES: list[str] = [AUTO]


# os.environ's own dict, read directly: os.environ.get encodes the key and raises KeyError inside for each missing
# variable, microseconds per call on a path that runs for every layer. The mapping stays os.environ's (its
# __setitem__ and monkeypatch.setenv write into it); other Pythons fall back to os.environ.get.
_ENVIRON = getattr(os.environ, "_data", None)
_ENCODE = getattr(os.environ, "encodekey", None)


def _watched_reader() -> Callable[[], tuple[object, ...]]:
    """A function returning the watched variables' values, built once per registration: the reads of the two
    usual variables written out (a third of the time of a general loop over them)."""
    if _ENVIRON is None or _ENCODE is None:
        return lambda: tuple(map(os.environ.get, _WATCHED))
    get, keys = _ENVIRON.get, tuple(_ENCODE(v) for v in _WATCHED)
    if len(keys) == 2:
        first, second = keys
        return lambda: (get(first), get(second))
    return lambda: tuple(map(get, keys))


_watched_values = _watched_reader()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run for this device and dtype; the message says why."""


def register(backend: Backend) -> Backend:
    """Add a backend under ``backend.name``; registering a name twice is a programming error."""
    global _WATCHED, _watched_values
    if not backend.name or backend.name == AUTO:
        raise ValueError(f"a backend needs a name other than {AUTO!r}, got {backend.name!r}")
    if backend.name in _BACKENDS:
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    _WATCHED = (*_WATCHED, *(v for v in backend.environment if v not in _WATCHED))
    _watched_values = _watched_reader()
    if backend.name not in _NAMES:
        _NAMES.append(backend.name)
    clear_cache()
    return backend


def clear_cache() -> None:
    """Forget every cached answer (availability, "auto"'s order); the next call asks the backends again."""
    _RESOLVED.clear()
    _ORDER.clear()


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


def name_id(name: str) -> int:
    """The small integer standing for a checked backend name (0 for ``"auto"``)."""
    return _NAMES.index(name)


def name_of(identifier: int) -> str:
    """The backend name :func:`name_id` gave ``identifier``."""
    return _NAMES[identifier]


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
    :meth:`~bnlab.kernels.base.Backend.auto_min_numel` for that size and mode (``fused``: a call that adds a
    residual or applies an activation; ``channels_last``: the input's memory format), passing over a backend that
    is only faster on larger layers or on other kinds of call; an explicit name or ``$BNLAB_BACKEND`` is never
    second-guessed. Raises ValueError for an unknown name and :class:`BackendUnavailableError` for one that
    cannot run here.
    """
    if torch.compiler.is_compiling():
        # Answered outside the graph: availability checks may import or even build kernels, which a tracer
        # cannot follow. The size-aware choice is left out here, since shapes may be symbolic while tracing.
        env = os.environ.get(ENV_VAR, "")
        return _BACKENDS[_resolve_while_tracing(name, env if env != AUTO else "", device.type, dtype)]
    return _resolve_call(name, device, dtype, numel, training, fused, channels_last)


def resolve_for(name: str, x: Tensor, training: bool, fused: bool = False) -> Backend:
    """:func:`resolve` for an eager call on input ``x`` (its device, dtype, size and memory format).

    The hot path of every layer call: one dictionary lookup once the answer is known. Not for use while
    torch.compile traces (see :func:`resolve`).
    """
    channels_last = x.dim() > 3 and memory_format_of(x) is not torch.contiguous_format
    device = x.device
    # Keyed by the device itself: device.type builds a new string on every read, three times the lookup's cost.
    backend = _RESOLVED.get((name, device, x.dtype, _watched_values(), x.numel(), training, fused, channels_last))
    if backend is not None:
        return backend
    return _resolve_call(name, device, x.dtype, x.numel(), training, fused, channels_last)


def _resolve_call(name: str, device: torch.device, dtype: torch.dtype, numel: int | None, training: bool,
                  fused: bool, channels_last: bool) -> Backend:
    watched = _watched_values()
    call = (name, device, dtype, watched, numel, training, fused, channels_last)
    backend = _RESOLVED.get(call)
    if backend is not None:
        return backend
    if len(_RESOLVED) >= _RESOLVED_MAX:
        _RESOLVED.clear()
    key = (name, device.type, dtype, watched)
    backend = _RESOLVED.get(key)
    if backend is None:
        env = os.environ.get(ENV_VAR, "")
        backend = _RESOLVED[key] = _resolve(name, env if env != AUTO else "", device.type, dtype)
    if numel is not None and name == AUTO and not env_override():
        backend = _by_size(backend, device, dtype, numel, training, fused, channels_last, watched)
    _RESOLVED[call] = backend
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
             fused: bool, channels_last: bool, watched: tuple[object, ...]) -> Backend:
    if numel >= best.auto_min_numel(device, dtype, training, fused, channels_last):
        return best
    key = (device.type, dtype, watched)
    order = _ORDER.get(key)
    if order is None:
        order = _ORDER[key] = [_BACKENDS[n] for n in available_backends(device, dtype)]
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
