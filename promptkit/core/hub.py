"""Loading by hub id on a machine that may be offline: fail at once with a clear message
instead of after minutes of retries."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id."""
    return name.startswith((".", "/", "~")) or os.sep + os.sep in name or Path(name).exists()


@functools.cache
def reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (checked once per process)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parsed = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True
