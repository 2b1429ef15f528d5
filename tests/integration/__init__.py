"""Tests against the real services the test session starts."""
