"""txdht benchmarks and fuzz targets (see benchmarks/README.md)."""
