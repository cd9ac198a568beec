"""Pick the object-store adapter the settings name."""

from __future__ import annotations

from eostream.shared.errors import ConfigError
from eostream.shared.settings import ServiceSettings
from eostream.shared.storage.base import ObjectStore


def build_object_store(settings: ServiceSettings) -> ObjectStore:
    if settings.store == "s3":
        from eostream.shared.storage.s3 import S3ObjectStore

        if settings.s3 is None:  # ServiceSettings validation rules this out
            raise ConfigError("store=s3 needs the s3 settings")
        return S3ObjectStore(settings.s3, settings.bucket)
    from eostream.shared.storage.local import LocalObjectStore

    return LocalObjectStore(settings.local_store_root, settings.bucket)
