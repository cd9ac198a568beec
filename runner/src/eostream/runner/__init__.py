"""eostream.runner: the ``eostream`` command, the embedded demo, the process supervisor."""
