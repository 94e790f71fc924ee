"""Tests of what the project ships: the wheel, and a client-only install of it."""
