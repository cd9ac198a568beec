"""eostream.shared."""
