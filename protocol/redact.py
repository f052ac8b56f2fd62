"""Redaction of secrets in text bound for logs (pure functions).

Covers RTSP/HTTP URL credentials (``rtsp://user:pass@host`` → ``rtsp://***@host``),
token-bearing query parameters (``token``, ``pb_grant``, ``access_token``, ``sig``,
``signature``, ``key``) and bearer headers. Used by the pod's ffmpeg log relay
and by the gateway's access log.
"""

from __future__ import annotations

import re

# userinfo runs to the LAST "@" of the URL token (passwords may contain "@" or "/"):
# over-redacting a path that contains "@" is the safe side.
_URL_CREDS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s\"']*@")
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:token|pb_grant|access_token|auth|sig|signature|key|apikey|api_key|x-amz-signature)=)[^&\s#\"']*"
)
_BEARER = re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+")
_KEY_VALUE = re.compile(
    r"(?i)\b((?:password|passwd|secret|api_key|stream_secret|pod_api_key|pb_grant)[\"']?\s*[=:]\s*[\"']?)"
    r"[^\s&\"',;]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# the PlateBridge POD connection guide's token: base64 of a JSON object ("eyJ") "." 64 hex digits
_LEGACY_TOKEN = re.compile(r"\beyJ[A-Za-z0-9+/_-]{5,}={0,2}\.[0-9A-Fa-f]{64}\b")


def redact(text: str) -> str:
    """Return ``text`` with URL credentials, secret query values, bearer tokens and
    anything shaped like a JWT or the guide's legacy stream token replaced by ``***``."""
    text = _URL_CREDS.sub(r"\1***@", text)
    text = _QUERY_SECRET.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    text = _KEY_VALUE.sub(r"\1***", text)
    text = _LEGACY_TOKEN.sub("***", text)
    return _JWT.sub("***", text)
