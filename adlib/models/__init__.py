"""See adlib/__init__.py."""
