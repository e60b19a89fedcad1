"""Is the Hugging Face Hub reachable? Asked once, so an offline machine fails (or falls
back) in seconds instead of waiting out the hub clients' retries."""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

log = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        log.warning("the Hugging Face Hub (%s) is unreachable: using the local cache only", host)
        # the hub clients read these when first imported: later imports go straight to the cache
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        return False
