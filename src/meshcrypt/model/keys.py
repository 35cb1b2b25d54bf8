"""WireGuard keys: 32 bytes, shown as base64 (datastore, `wg`) or hex (wireguard-go UAPI).

A private key never prints itself: its repr and str are masked. Public keys are derived with
X25519 from the `cryptography` package, which gives the same results as `wg genkey` / `wg pubkey`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Self

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_LEN = 32


class KeyFormatError(ValueError):
    """Text or bytes that are not a WireGuard key."""


@dataclass(frozen=True, slots=True)
class Key:
    """A 32-byte WireGuard key (public or pre-clamped private material)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise KeyFormatError(f"a WireGuard key has {KEY_LEN} bytes, got {len(self.raw)}")

    @classmethod
    def zero(cls) -> Self:
        return cls(bytes(KEY_LEN))

    @classmethod
    def from_base64(cls, text: str) -> Self:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyFormatError(f"not base64: {exc}") from exc
        return cls(raw)

    @classmethod
    def from_hex(cls, text: str) -> Self:
        try:
            raw = bytes.fromhex(text.strip())
        except ValueError as exc:
            raise KeyFormatError(f"not hex: {exc}") from exc
        return cls(raw)

    @property
    def is_zero(self) -> bool:
        return self.raw == bytes(KEY_LEN)

    def to_base64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def to_hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.to_base64()

    def __repr__(self) -> str:
        return f"Key({self.to_base64()})"


@dataclass(frozen=True, slots=True, repr=False)
class PrivateKey(Key):
    """A private key. Its text forms are only reachable through explicit methods."""

    @classmethod
    def generate(cls) -> PrivateKey:
        # The raw-bytes methods: `cryptography`'s serialization module would add ≈ 25 ms to the
        # agent's start-up.
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    def public_key(self) -> Key:
        public = X25519PrivateKey.from_private_bytes(self.raw).public_key()
        return Key(public.public_bytes_raw())

    def clamped(self) -> PrivateKey:
        """The key as WireGuard stores it (X25519 clamping), for comparisons with a device."""
        b = bytearray(self.raw)
        b[0] &= 248
        b[31] = (b[31] & 127) | 64
        return PrivateKey(bytes(b))

    def __str__(self) -> str:
        return "PrivateKey(<hidden>)"

    def __repr__(self) -> str:
        return "PrivateKey(<hidden>)"
