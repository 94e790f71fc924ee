"""The blocking client, generated from ``convengine/client/_async`` (``scripts/unasync.py``)."""
