"""Image input/output: one :class:`Image` type for NIfTI, NRRD, MHA and DICOM series."""

from engine.io.image import Image, list_dicom_series, read_image, read_label, validate_image, write_image

__all__ = ["Image", "read_image", "read_label", "write_image", "validate_image", "list_dicom_series"]
