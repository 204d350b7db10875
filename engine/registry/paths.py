"""Where models live: the per-user model directory and the folder of shipped demo bundles.

The **user model directory** holds imported and self-trained models; it is per user and never inside
the installed package, so upgrades and read-only installs never lose or block them. The **builtin
directory** holds the demo weights shipped with the repository.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import engine
from engine.errors import BundleError

MODEL_DIR_ENV = "ONCOSTAGING_MODEL_DIR"
BUILTIN_DIR_ENV = "ONCOSTAGING_BUILTIN_MODELS"


def _package_dir() -> Path:
    return Path(engine.__file__).resolve().parent


def user_model_dir() -> Path:
    """``$ONCOSTAGING_MODEL_DIR`` or the platform's per-user data folder; not created here."""
    env = os.environ.get(MODEL_DIR_ENV, "").strip()
    if env:
        path = Path(env).expanduser().absolute()
        if path.resolve().is_relative_to(_package_dir()):
            raise BundleError(f"{MODEL_DIR_ENV}={env} points inside the installed engine package "
                              f"({_package_dir()}), which upgrades replace; choose a folder of your own.")
        return path
    home = Path.home()
    if sys.platform.startswith("win"):
        base = Path(os.environ["APPDATA"]) if os.environ.get("APPDATA") else home / "AppData" / "Roaming"
        return base / "OncoStaging" / "models"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "OncoStaging" / "models"
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else home / ".local" / "share"
    return base / "oncostaging" / "models"


def builtin_dir() -> Path | None:
    """Shipped demo bundles: ``$ONCOSTAGING_BUILTIN_MODELS``, else ``models/`` beside ``engine`` if any."""
    env = os.environ.get(BUILTIN_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    path = _package_dir().parent / "models"
    return path if path.is_dir() else None
