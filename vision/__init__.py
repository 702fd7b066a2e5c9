"""Catalog: VPT recipes for image runs (YAML), installed as ``promptkit.catalog.vision``."""
