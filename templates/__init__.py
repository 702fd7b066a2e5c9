"""Catalog: named templates (YAML), installed as ``promptkit.catalog.templates``."""
