"""The inference service's domain errors. The API maps them to HTTP statuses in one place
(``api/errors.py``); consumers dead-letter the bad-input ones (they subclass InvalidEventError)."""

from __future__ import annotations

from eostream.shared.errors import EostreamError, InvalidEventError, RetryableError


class InferenceError(EostreamError):
    """Base of this service's errors."""


class BadInputError(InferenceError, InvalidEventError):
    """The scene, item, raster or request is unusable as given; retrying will not help."""

    code = "bad_input"


class NotFoundError(BadInputError):
    """A referenced item, asset or model artifact does not exist (404 upstream): the request
    refers to something missing, answered 422 (``not_found`` is this API's own 404)."""

    code = "referenced_not_found"


class BandMismatchError(BadInputError):
    """The scene lacks bands the model needs."""

    code = "band_mismatch"


class LevelMismatchError(BadInputError):
    """The scene's processing level is not the model's, and the policy says refuse."""

    code = "level_mismatch"


class CoarseSceneError(BadInputError):
    """The scene is much coarser than the scale the model was trained at, and coarse scenes are
    not allowed (``INFERENCE_ALLOW_COARSE_SCENES`` or the request's ``allow_coarse``)."""

    code = "coarse_scene"


class TooLargeError(BadInputError):
    code = "too_large"


class SourceNotAllowedError(BadInputError):
    """A REST request named a source outside the allowed roots, buckets and hosts, or one the
    service may not read. One message for every reason: no answer tells whether a file exists
    or a port is open (the reason is logged)."""

    code = "source_not_allowed"


class ModelLoadError(InferenceError, InvalidEventError):
    """A promoted model cannot be used: checksum, card or graph do not match."""

    code = "model_invalid"


class NoModelError(InferenceError, RetryableError):
    """No model is deployed yet; try again once one is promoted."""

    code = "no_model"


class ResultNotFoundError(InferenceError):
    code = "not_found"


class ReferenceSetError(BadInputError):
    """A reference set (labels for map accuracy), or one of its items, cannot be evaluated."""

    code = "bad_reference"
