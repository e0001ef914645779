"""meshlm data package."""
