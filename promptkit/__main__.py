"""``python -m promptkit`` (and ``accelerate launch -m promptkit``) runs the command line."""

from promptkit.cli import app

app()
