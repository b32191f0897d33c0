"""Where results go: the MLflow writer (with a local fallback), publishing, reading runs back and rerunning the analysis."""
