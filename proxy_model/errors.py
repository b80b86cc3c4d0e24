"""Errors the model raises for bad item content (callers turn them into DLQ reasons)."""


class InvalidItemError(ValueError):
    """The item's content cannot be encoded: corrupt or oversized image, empty text, …"""
