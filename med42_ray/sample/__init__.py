"""Embedded sample data (generated; see README.md and generate.py)."""
