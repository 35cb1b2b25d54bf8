"""meshcrypt.model.keys: text forms, validation, masking, clamping, and agreement with `wg`."""

from __future__ import annotations

import base64
import dataclasses
import logging
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcrypt.model.keys import KEY_LEN, Key, KeyFormatError, PrivateKey

raw_keys = st.binary(min_size=KEY_LEN, max_size=KEY_LEN)

# RFC 7748 §6.1, Alice: an independent check of the X25519 derivation.
RFC7748_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
RFC7748_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


def is_clamped(raw: bytes) -> bool:
    return raw[0] & 0b111 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40 != 0


# --- text forms ---------------------------------------------------------------------------------


@given(raw_keys)
def test_base64_round_trip(raw: bytes) -> None:
    key = Key(raw)
    text = key.to_base64()
    assert text == base64.b64encode(raw).decode()
    assert len(text) == 44
    assert Key.from_base64(text) == key


@given(raw_keys)
def test_hex_round_trip(raw: bytes) -> None:
    key = Key(raw)
    text = key.to_hex()
    assert text == raw.hex()
    assert len(text) == 64
    assert Key.from_hex(text) == key


@given(raw_keys)
def test_base64_and_hex_name_the_same_key(raw: bytes) -> None:
    key = Key(raw)
    assert Key.from_hex(key.to_hex()) == Key.from_base64(key.to_base64())


def test_surrounding_whitespace_is_ignored() -> None:
    key = Key(bytes(range(KEY_LEN)))
    # `wg genkey` and friends end their output with a newline.
    assert Key.from_base64(f"  {key.to_base64()}\n") == key
    assert Key.from_hex(f"{key.to_hex()}\n") == key


def test_private_key_parsers_return_private_keys() -> None:
    key = PrivateKey.generate()
    from_b64 = PrivateKey.from_base64(key.to_base64())
    from_hex = PrivateKey.from_hex(key.to_hex())
    assert type(from_b64) is PrivateKey
    assert type(from_hex) is PrivateKey
    assert from_b64 == key == from_hex


def test_keys_are_frozen_values() -> None:
    a, b = Key(bytes(range(KEY_LEN))), Key(bytes(range(KEY_LEN)))
    assert a == b
    assert len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.raw = bytes(KEY_LEN)  # type: ignore[misc]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   \n", id="blank"),
        pytest.param(base64.b64encode(bytes(31)).decode(), id="31-bytes"),
        pytest.param(base64.b64encode(bytes(33)).decode(), id="33-bytes"),
        pytest.param("not a key at all, not base64!", id="not-base64"),
        pytest.param(base64.b64encode(bytes(KEY_LEN)).decode().rstrip("="), id="no-padding"),
        pytest.param("-_" * 21 + "A=", id="urlsafe-alphabet"),
        pytest.param("é" * 44, id="non-ascii"),
        pytest.param(
            base64.b64encode(bytes(KEY_LEN)).decode()[:20] + "\n" + "A" * 23 + "=",
            id="inner-newline",
        ),
    ],
)
def test_bad_base64_raises_key_format_error(text: str) -> None:
    with pytest.raises(KeyFormatError):
        Key.from_base64(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("00" * 31, id="31-bytes"),
        pytest.param("00" * 33, id="33-bytes"),
        pytest.param("0" * 63, id="odd-length"),
        pytest.param("zz" * 32, id="not-hex"),
        pytest.param(base64.b64encode(bytes(KEY_LEN)).decode(), id="base64-given-as-hex"),
    ],
)
def test_bad_hex_raises_key_format_error(text: str) -> None:
    with pytest.raises(KeyFormatError):
        Key.from_hex(text)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_bytes_are_refused(length: int) -> None:
    with pytest.raises(KeyFormatError, match=f"got {length}"):
        Key(bytes(length))
    with pytest.raises(KeyFormatError):
        PrivateKey(bytes(length))


def test_key_format_error_is_a_value_error() -> None:
    assert issubclass(KeyFormatError, ValueError)


def test_parse_errors_do_not_echo_the_input() -> None:
    # A malformed private key must not end up in a log line through the exception text.
    secret = PrivateKey.generate().to_base64()
    for bad in (secret[:-2], secret + "AAAA", secret.replace("=", "!")):
        with pytest.raises(KeyFormatError) as info:
            PrivateKey.from_base64(bad)
        assert bad.strip("=") not in str(info.value)
        assert secret[:16] not in str(info.value)


# --- the zero key -------------------------------------------------------------------------------


def test_zero_key() -> None:
    zero = Key.zero()
    assert zero.raw == bytes(KEY_LEN)
    assert zero.is_zero
    assert zero.to_base64() == "A" * 43 + "="
    assert zero.to_hex() == "0" * 64
    assert Key.from_base64("A" * 43 + "=") == zero


def test_a_single_set_bit_anywhere_makes_a_key_non_zero() -> None:
    for bit in range(KEY_LEN * 8):
        raw = (1 << bit).to_bytes(KEY_LEN, "little")
        assert not Key(raw).is_zero, bit


# --- masking ------------------------------------------------------------------------------------


def secret_forms(key: PrivateKey) -> list[str]:
    b64 = key.to_base64()
    return [b64, b64.rstrip("="), key.to_hex(), key.to_hex().upper()]


def rendered(key: PrivateKey) -> list[str]:
    holder = {"private_key": key}
    # What a log line shows: logging formats its arguments with %s / %r.
    logged = logging.makeLogRecord({"msg": "key %s / %r", "args": (key, key)}).getMessage()
    return [repr(key), str(key), f"{key}", f"{key!r}", logged, repr([key]), repr(holder)]


@given(raw_keys)
def test_private_key_text_never_shows_the_key(raw: bytes) -> None:
    key = PrivateKey(raw)
    for text in rendered(key):
        for secret in secret_forms(key):
            assert secret not in text
        assert "PrivateKey" in text


def test_generated_private_key_is_masked() -> None:
    key = PrivateKey.generate()
    assert str(key) == repr(key) == "PrivateKey(<hidden>)"


def test_public_key_text_is_its_base64() -> None:
    public = PrivateKey.generate().public_key()
    assert type(public) is Key
    assert str(public) == public.to_base64()
    assert public.to_base64() in repr(public)


# --- derivation and clamping --------------------------------------------------------------------


def test_public_key_matches_rfc7748_vector() -> None:
    assert PrivateKey.from_hex(RFC7748_PRIVATE).public_key() == Key.from_hex(RFC7748_PUBLIC)


def test_generated_keys_are_clamped_and_distinct() -> None:
    keys = [PrivateKey.generate() for _ in range(200)]
    assert all(is_clamped(k.raw) for k in keys)
    assert all(k.clamped() == k for k in keys)
    assert len(set(keys)) == len(keys)


@given(raw_keys)
def test_clamping_sets_the_x25519_bits_and_keeps_the_public_key(raw: bytes) -> None:
    key = PrivateKey(raw)
    clamped = key.clamped()
    assert type(clamped) is PrivateKey
    assert is_clamped(clamped.raw)
    assert clamped.raw[1:31] == raw[1:31]
    assert clamped.clamped() == clamped
    # X25519 clamps internally, so the public key does not depend on clamping.
    assert clamped.public_key() == key.public_key()


# --- agreement with wireguard-tools -------------------------------------------------------------

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="`wg` (wireguard-tools) is not installed")


def wg(*args: str, stdin: str | None = None) -> str:
    assert WG is not None
    done = subprocess.run(
        [WG, *args], input=stdin, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


@needs_wg
def test_wg_genkey_keys_give_the_same_public_key_as_wg_pubkey() -> None:
    for _ in range(50):
        private_text = wg("genkey")
        private = PrivateKey.from_base64(private_text)
        assert is_clamped(private.raw)
        assert private.public_key().to_base64() == wg("pubkey", stdin=private_text + "\n")


@needs_wg
def test_our_keys_give_the_same_public_key_in_wg_pubkey() -> None:
    for _ in range(50):
        private = PrivateKey.generate()
        assert wg("pubkey", stdin=private.to_base64() + "\n") == private.public_key().to_base64()
