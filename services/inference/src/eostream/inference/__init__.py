"""eostream.inference."""
