"""JIP-3 codec."""
