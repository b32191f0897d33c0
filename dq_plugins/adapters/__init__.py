"""Framework adapters (thin): the Lightning and Hugging Face callbacks and the helpers that read their batches.

An adapter knows its framework and nothing else; it hands each batch to the recording session.
"""
