"""PlateBridge wire contract: msgspec message types and stream-token functions.

Pure: nothing in this package performs I/O. The pod, the gateway, the portal
stand-in and the tests all share these definitions so the contract lives in
exactly one place.
"""

from protocol.errors import ProtocolError, TokenError, TokenExpired, TokenInvalid
from protocol.tokens import (
    GATEWAY_TO_POD_AUDIENCE,
    USER_STREAM_AUDIENCE,
    Keyring,
    PodStreamClaims,
    PublicKeyring,
    SigningKey,
    UserStreamClaims,
    bearer_token,
    mint_pod_token,
    mint_user_token,
    verify_pod_token,
    verify_user_token,
)

__all__ = [
    "GATEWAY_TO_POD_AUDIENCE",
    "USER_STREAM_AUDIENCE",
    "Keyring",
    "PodStreamClaims",
    "ProtocolError",
    "PublicKeyring",
    "SigningKey",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "UserStreamClaims",
    "bearer_token",
    "mint_pod_token",
    "mint_user_token",
    "verify_pod_token",
    "verify_user_token",
]
