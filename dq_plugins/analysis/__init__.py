"""End-of-fit analysis: the per-sample table from the recorded dynamics and embeddings, slices and weak slices."""
