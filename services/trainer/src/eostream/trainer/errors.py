"""The trainer's domain errors and how the consumer treats them.

Bad requests (unknown band set, missing data, impossible hyperparameters) are
:class:`InvalidEventError` subclasses: the bus dead-letters them with the message as the reason.
"""

from __future__ import annotations

from eostream.shared.errors import EostreamError, InvalidEventError


class TrainerError(EostreamError):
    """Base of the trainer's errors."""


class BadTrainingRequestError(InvalidEventError, TrainerError):
    """The request cannot be trained as asked; the message says what to change."""


class DatasetError(BadTrainingRequestError):
    """The training data is missing or does not hold what the request selects."""


class ExportMismatchError(InvalidEventError, TrainerError):
    """The ONNX export disagrees with torch: the model is not registered.

    Dead-lettered like bad input: training the same request again would fail the same way.
    """
