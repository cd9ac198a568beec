"""eostream.ingest."""
