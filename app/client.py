"""Moved to :mod:`convengine.client`; this re-export stays for one release."""

from convengine.client import AsyncConvClient, ConvClient, ConvServiceError

__all__ = ["AsyncConvClient", "ConvClient", "ConvServiceError"]
