"""eostream.registry_bridge."""
