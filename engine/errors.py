"""Exceptions the user can act on.

Every error raised for bad input derives from :class:`EngineError` and says what was wrong
and what to do, so the CLI and the Slicer modules can show the message as is.
"""


class EngineError(Exception):
    """Base class: a problem with the user's input, data or model, not a bug."""


class ImageError(EngineError):
    """An image file or series is missing, unreadable or not a usable 3D scalar volume."""


class DatasetError(EngineError):
    """A dataset folder does not follow the nnU-Net raw layout or is inconsistent."""


class PlanError(EngineError):
    """A plan cannot be made from the data, or a plan file is invalid."""


class BundleError(EngineError):
    """A model bundle is missing, incomplete, tampered with, or for another task."""


class TrainingError(EngineError):
    """Training cannot start or continue (bad configuration, unusable checkpoint)."""


class Cancelled(EngineError):
    """A long run was cancelled by the user; nothing half-written is left behind."""
