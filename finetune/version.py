"""The package version (one place: pyproject reads it, exports and metadata record it)."""

__version__ = "0.1.0"
