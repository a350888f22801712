"""mlsys-bench: the shared benchmark harness."""
