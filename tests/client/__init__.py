"""Tests of convengine.client: its methods, its generated half, what it imports."""
