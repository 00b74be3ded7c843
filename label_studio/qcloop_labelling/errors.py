"""Exceptions of the labelling sync, under qcloop's own tree.

    QcloopError                     (qcloop.errors)
    └── LabellingError              anything the labelling sync raises on purpose
        ├── LabelStudioUnavailable  the server cannot be reached (or is not healthy)
        ├── LabelStudioAuthError    the token was refused
        ├── LabelStudioApiError     the server refused a request (status + detail)
        └── AnnotationError         exported annotations are invalid (names the task ids)

Every message names the URL or the task and says what to do.
"""

from __future__ import annotations

from qcloop.errors import QcloopError


class LabellingError(QcloopError):
    """Base of every error of the labelling sync."""


class LabelStudioUnavailable(LabellingError):
    """Label Studio cannot be reached at its URL."""


class LabelStudioAuthError(LabellingError):
    """Label Studio refused the API token."""


class LabelStudioApiError(LabellingError):
    """Label Studio answered a request with an error status."""


class AnnotationError(LabellingError):
    """Exported annotations are invalid; the message names every bad task id."""
