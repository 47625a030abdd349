"""Ingest engine: wire -> decode -> ring -> writer."""
