"""The HTTP client of the convengine service (the ``client`` extra: httpx, tqdm)."""

from ._async.client import AsyncConvClient, ConvClient, ConvServiceError, resolve_addresses

__all__ = ["AsyncConvClient", "ConvClient", "ConvServiceError", "resolve_addresses"]
