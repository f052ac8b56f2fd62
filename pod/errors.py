"""Exception tree of the ``pod`` package (root: :class:`PodError`)."""


class PodError(Exception):
    """Root of every error raised by :mod:`pod`."""


class ConfigError(PodError):
    """Invalid pod configuration. ``str(exc)`` names the key path and the reason."""


class BindRefused(ConfigError):
    """``stream_bind`` is not a tailnet (or loopback) address; the pod refuses to listen there."""


class TailnetUnavailable(PodError):
    """tailscaled could not report a tailnet IPv4 address (yet)."""


class PortalError(PodError):
    """A call to the portal failed. ``str(exc)`` names the method, path and HTTP status,
    never the pod API key or any token."""


class PortalUnavailable(PortalError):
    """Transient failure: connect error, timeout, HTTP 5xx, 408 or 429, or an unreadable
    answer. Retry later (the outbox does; ``get_plates`` retries inside).
    ``.status`` is the HTTP status, or None when no answer arrived."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PortalRejected(PortalError):
    """Permanent refusal: an HTTP 4xx other than 408/429 (e.g. 400 bad body, 401 bad API
    key). Retrying the same request will not help. ``.status`` is the HTTP status."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message or f"portal rejected the request: HTTP {status}")
        self.status = status


class PortalAuthRejected(PortalRejected):
    """HTTP 401 or 403: the portal does not accept this pod's API key (rotated, revoked, or
    not allowed for this call). Not the row's fault: queues hold their rows and wait for an
    authenticated call to succeed (a heartbeat) or a new key (SIGHUP, restart)."""


class PortalNotFound(PortalRejected):
    """HTTP 404 from a portal API endpoint: usually a route missing for a while (a portal
    deploy in progress), so queues retry it like an outage rather than park the row."""


class QueueItemInvalid(PodError):
    """A queued row cannot be sent as stored (e.g. a body salvaged from a damaged state
    file that no longer decodes). The row is parked with reason ``invalid``, never dropped."""


class FfmpegError(PodError):
    """An ffmpeg/ffprobe child could not be started, or failed in a way its caller cannot
    read around. ``str(exc)`` says why, with any RTSP credentials redacted."""


class Fmp4Error(PodError):
    """A fragmented MP4 stream (ISO/IEC 14496-12) is malformed: a box header is bad, a
    box runs past its parent, or a moof holds no fragment of the expected track."""


class StorageConflict(PortalRejected):
    """Storage already holds the object a signed upload URL names: Supabase Storage's
    ``"The resource already exists"`` (``statusCode`` ``"409"``, error ``Duplicate``),
    answered as HTTP 409 or, by storage-api's legacy error format, as HTTP 400 with that
    body. For a clip's own path it means an earlier PUT landed. ``.status`` is the HTTP
    status as answered (409 or 400)."""


class RecorderError(PodError):
    """A detection clip could not be made: no usable segment in the window, the init
    segment missing, or ffmpeg/ffprobe failed. ``str(exc)`` says why, with any RTSP
    credentials redacted."""
