"""meshlm model package."""
