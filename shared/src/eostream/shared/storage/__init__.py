"""The object-store port and its adapters (S3 through the minio client, local files)."""

from eostream.shared.storage.base import ObjectInfo, ObjectStore, validate_key
from eostream.shared.storage.factory import build_object_store

__all__ = ["ObjectInfo", "ObjectStore", "build_object_store", "validate_key"]
