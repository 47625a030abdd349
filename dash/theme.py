"""Palette: colours where the terminal has them, bold/standout only when NO_COLOR is set.

Every entry carries a monochrome attribute, so the same names work on a 1-colour screen.
"""

from __future__ import annotations

import os

# (name, foreground, background, monochrome)
PALETTE: list[tuple[str, str, str, str]] = [
    ("header", "white,bold", "dark blue", "standout"),
    ("tab", "light gray", "dark blue", "standout"),
    ("tab_active", "black,bold", "light gray", "bold"),
    ("ok", "light green,bold", "dark blue", "standout"),
    ("bad", "white,bold", "dark red", "bold"),
    ("footer", "black", "light gray", "standout"),
    ("key", "dark blue,bold", "light gray", "bold"),
    ("prompt", "yellow,bold", "black", "bold"),
    ("title", "yellow,bold", "", "bold"),
    ("label", "light gray", "", ""),
    ("value", "white,bold", "", "bold"),
    ("good", "light green", "", "bold"),
    ("warn", "yellow,bold", "", "bold"),
    ("error", "light red,bold", "", "bold"),
    ("dim", "dark gray", "", ""),
    ("spark", "light cyan", "", ""),
    ("colhead", "black", "dark cyan", "standout"),
    ("colhead_sorted", "black,bold", "light cyan", "standout,bold"),
    ("row", "", "", ""),
    ("row_down", "dark gray", "", ""),
    ("row_focus", "black", "light gray", "standout"),
    ("banner", "white,bold", "dark red", "standout"),
]


def no_color() -> bool:
    """https://no-color.org: any non-empty NO_COLOR disables colour."""
    return bool(os.environ.get("NO_COLOR"))
