"""eostream.trainer."""
