"""Operator console (urwid)."""
