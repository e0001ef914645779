"""meshlm train package."""
