"""Catalog: named label-word sets (YAML), installed as ``promptkit.catalog.verbalizers``."""
