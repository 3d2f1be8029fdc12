"""The Python API: a loaded model turning settings into videos."""
