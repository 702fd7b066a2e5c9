"""The serving wing: a trained run loaded back (``Predictor``), many runs on one backbone in
mixed batches (``Host``), ensembles of runs, and the HTTP server."""
