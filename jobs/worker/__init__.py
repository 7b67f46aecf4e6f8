"""Worker processes: the supervisor the Procfile runs and the RQ worker classes."""
