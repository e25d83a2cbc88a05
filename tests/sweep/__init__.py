"""Tests for scrutable.sweep."""
