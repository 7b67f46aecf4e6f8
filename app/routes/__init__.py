"""HTTP endpoints, one module per resource; ``app.main`` mounts their ``routes``."""
