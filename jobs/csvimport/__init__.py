"""The CSV import wing: format detection, header cleaning, typing, loading, profiles."""
