"""Task networks built from a plan."""
