"""Dataset acquisition and preparation."""
