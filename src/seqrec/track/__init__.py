"""Tracking: run comparison and reports."""
