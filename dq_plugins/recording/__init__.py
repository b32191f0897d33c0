"""Recording on the model's device: the session both adapters share, the per-sample ledger, staging,
the embedding buffer and latency, with one host transfer per epoch at most."""
