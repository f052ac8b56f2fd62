"""Exception tree of the ``pod`` package (root: :class:`PodError`)."""


class PodError(Exception):
    """Root of every error raised by :mod:`pod`."""


class ConfigError(PodError):
    """Invalid pod configuration. ``str(exc)`` names the key path and the reason."""


class BindRefused(ConfigError):
    """``stream_bind`` is not a tailnet (or loopback) address; the pod refuses to listen there."""


class TailnetUnavailable(PodError):
    """tailscaled could not report a tailnet IPv4 address (yet)."""
