"""meshlm benchmarks package."""
