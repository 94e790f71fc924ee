"""The async client: the source from which ``convengine/client/_sync`` is generated."""
