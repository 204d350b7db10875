"""The EsophagusStaging logic under its module name (the work is in :mod:`OncoStagingCommon.logic`)."""
