"""The torch device the pipeline computes on: the top-level ``device`` parameter.

Spellings (checked by the parameter schema without importing torch, :func:`check_device_name`):

* ``auto``: the first CUDA device when CUDA is available, else the CPU. ``auto`` never picks
  Apple's MPS: it has no float64, which the NSS loss and metrics use, so training and scoring
  would fail there; ask for ``mps`` explicitly to extract activations on it.
* ``cpu``; ``cuda`` (the current CUDA device, normally ``cuda:0``) or ``cuda:N``; ``mps``.

:func:`resolve_device` turns a spelling into a :class:`torch.device` and refuses a device this
machine lacks with :class:`DeviceError`, which names ``device`` and lists what is available.
Resolving to CUDA also sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless already set): cuBLAS
needs it for ``torch.use_deterministic_algorithms(True)``, under which the readouts and the
scene model are trained, and reads it only when it first starts.

Results computed on different devices agree to floating-point tolerance, not bit for bit; the
stages record the resolved device in their provenance.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from dissect.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_SPELLINGS", "DeviceError", "available_devices", "check_device_name",
           "resolve_device"]

#: the accepted spellings, as the error messages show them
DEVICE_SPELLINGS = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda(:[0-9]+)?)")


class DeviceError(DataError):
    """A device spelled wrongly, or requested but not present on this machine."""


def check_device_name(value: object) -> str:
    """``value`` when it is one of :data:`DEVICE_SPELLINGS`, else ValueError (no torch import)."""
    if not isinstance(value, str) or not _DEVICE_RE.fullmatch(value):
        raise ValueError(f"must be {DEVICE_SPELLINGS}, got {value!r}")
    return value


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices torch can use here: ``cpu``, then ``cuda:0`` … ``cuda:N-1``, then ``mps``."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The :class:`torch.device` a ``device`` parameter means on this machine.

    ``auto`` → ``cuda:<current>`` when CUDA is available, else ``cpu``; ``cuda`` → the current
    CUDA device with its index. A device that is not available raises :class:`DeviceError`
    (source ``device``) naming the request and the available devices.
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    try:
        check_device_name(name)
    except ValueError as exc:
        raise DeviceError("device", str(exc)) from None

    def unavailable(why: str) -> DeviceError:
        return DeviceError("device", f"{name!r} requested, but {why}; available on this machine: "
                                     f"{', '.join(available_devices())}")

    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise unavailable("MPS is not available (it needs an Apple-silicon Mac and a torch "
                              "built with MPS)")
        return torch.device("mps")
    # cuda, cuda:N, or auto with CUDA present
    if not torch.cuda.is_available():
        build = ("this torch was built without CUDA" if torch.version.cuda is None
                 else f"no CUDA device is visible (torch built for CUDA {torch.version.cuda})")
        raise unavailable(f"CUDA is not available: {build}")
    index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise unavailable(f"this machine has {count} CUDA device(s) (cuda:0 … cuda:{count - 1})")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device("cuda", index)
