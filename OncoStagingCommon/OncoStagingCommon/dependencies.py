"""Which Python packages the engine still needs inside Slicer, and how to install them.

Slicer ships its own SimpleITK, VTK and NumPy, built for it: replacing them breaks Slicer, so they
are never installed or upgraded here. PyTorch is offered through the PyTorch extension
(PyTorchUtils), which picks the build for the user's GPU. Everything else (MONAI, safetensors, ...)
is installed with ``slicer.packaging`` (Slicer >= 5.12) or ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Never installed or upgraded from a module: Slicer's own builds.
PROVIDED_BY_SLICER = frozenset({"simpleitk", "vtk", "numpy"})

#: Engine requirements beyond torch: (pip requirement, import name). Mirrors pyproject.toml.
ENGINE_REQUIREMENTS: tuple[tuple[str, str], ...] = (
    ("monai>=1.4,<2", "monai"),
    ("safetensors>=0.4", "safetensors"),
    ("tqdm>=4.60", "tqdm"),
    ("scipy>=1.10", "scipy"),
    ("scikit-learn>=1.3", "sklearn"),
    ("matplotlib>=3.7", "matplotlib"),
)


@dataclass
class DependencyStatus:
    """What is missing; empty lists mean Segment & Stage can run."""

    torch_missing: bool
    missing: list[str]

    @property
    def ready(self) -> bool:
        return not self.torch_missing and not self.missing

    def describe(self) -> str:
        parts = []
        if self.torch_missing:
            parts.append("PyTorch (install it with the PyTorch extension's 'PyTorch Utils' module)")
        if self.missing:
            parts.append("Python packages: " + ", ".join(self.missing))
        return "Missing: " + "; ".join(parts) if parts else "All requirements are installed."


def _installed(import_name: str) -> bool:
    return importlib.util.find_spec(import_name) is not None


def check() -> DependencyStatus:
    missing = [req for req, name in ENGINE_REQUIREMENTS if not _installed(name)]
    return DependencyStatus(torch_missing=not _installed("torch"), missing=missing)


def requirement_name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep, 1)[0]
    return requirement.strip().lower()


def install(requirements: list[str]) -> None:
    """Install ``requirements`` into Slicer's Python (call after the user confirmed)."""
    forbidden = [r for r in requirements if requirement_name(r) in PROVIDED_BY_SLICER]
    if forbidden:
        raise ValueError(f"Refusing to replace Slicer's own packages: {', '.join(forbidden)}")
    if not requirements:
        return
    import slicer

    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_install"):
        packaging.pip_install(requirements)
    else:
        slicer.util.pip_install(requirements)
    log.info("Installed %s", ", ".join(requirements))
