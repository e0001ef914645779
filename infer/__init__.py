"""meshlm infer package."""
