"""Catalog: method presets for text runs (YAML), installed as ``promptkit.catalog.methods``."""
