"""Object store on any S3 API (MinIO here), through the minio client."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import S3Error

from eostream.shared.errors import ConfigError, ObjectNotFoundError, RetryableError
from eostream.shared.settings import S3Settings
from eostream.shared.storage.base import ObjectInfo, validate_key, validate_prefix

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}
_MISSING_CODES = {"NoSuchKey", "NoSuchObject"}


class S3ObjectStore:
    def __init__(self, settings: S3Settings, bucket: str) -> None:
        self._settings = settings
        self._bucket = bucket
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key.get_secret_value(),
            secret_key=settings.secret_key.get_secret_value(),
            secure=settings.secure,
            region=settings.region,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=5, read=60),
                retries=urllib3.Retry(
                    total=3, backoff_factor=0.2, status_forcelist=(502, 503, 504)
                ),
                maxsize=16,
            ),
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    def check(self) -> None:
        """Make sure the credentials work and the bucket exists (creating it if allowed)."""
        where = f"S3 endpoint {self._settings.endpoint}"
        try:
            if not self._client.bucket_exists(self._bucket):
                self._client.make_bucket(self._bucket)
        except S3Error as exc:
            if exc.code == "BucketAlreadyOwnedByYou":
                return  # another replica (or process) created it between our two calls
            if exc.code in _CREDENTIAL_CODES:
                raise ConfigError(
                    f"{where} rejected the credentials ({exc.code}): check the S3 access key "
                    "and secret key settings"
                ) from None
            raise ConfigError(f"{where}: {exc.code}: {exc.message}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise ConfigError(
                f"{where} is unreachable ({type(exc).__name__}): is it running?"
            ) from None

    def _call_error(self, exc: Exception, key: str) -> Exception:
        if isinstance(exc, S3Error) and exc.code in _MISSING_CODES:
            return ObjectNotFoundError(f"no object {key!r} in {self._bucket}")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return RetryableError(f"S3 {self._settings.endpoint}: {exc}")
        return exc

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        validate_key(key)
        try:
            self._client.put_object(
                self._bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._call_error(exc, key) from exc

    def put_file(self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        validate_key(key)
        try:
            self._client.fput_object(self._bucket, key, str(path), content_type=content_type)
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._call_error(exc, key) from exc

    def get_bytes(self, key: str) -> bytes:
        validate_key(key)
        response = None
        try:
            response = self._client.get_object(self._bucket, key)
            return response.read()
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._call_error(exc, key) from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def get_file(self, key: str, path: Path) -> None:
        validate_key(key)
        try:
            self._client.fget_object(self._bucket, key, str(path))
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._call_error(exc, key) from exc

    def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            self._client.stat_object(self._bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                return False
            raise
        except urllib3.exceptions.HTTPError as exc:  # the server is down: retryable, as a put
            raise self._call_error(exc, key) from exc
        return True

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._client.remove_object(self._bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._call_error(exc, key) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        found = self._client.list_objects(self._bucket, prefix=prefix or None, recursive=True)
        try:
            for obj in found:  # the listing is fetched page by page as it is iterated
                if obj.object_name is not None and not obj.is_dir:
                    yield ObjectInfo(key=obj.object_name, size=int(obj.size or 0))
        except (S3Error, urllib3.exceptions.HTTPError) as exc:
            raise self._call_error(exc, prefix) from exc

    def uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{validate_key(key)}"
