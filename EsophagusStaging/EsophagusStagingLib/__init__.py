"""Qt-free logic of the EsophagusStaging module (importable with the slicer-core wheel)."""
