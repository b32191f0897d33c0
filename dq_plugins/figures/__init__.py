"""Figures logged with the results: data map, embedding map (PNG and HTML), weak slices."""
