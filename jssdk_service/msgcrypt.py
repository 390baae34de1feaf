"""WeChat's message encryption (WXBizMsgCrypt): how pushes to a third-party platform are sealed and opened.

WeChat encrypts what it pushes to a platform's 授权事件接收URL (WECOM_PLATFORM.md B.1):

    Encrypt       = base64(AES-256-CBC(key, iv=key[:16], PKCS#7 with K=32 (
                        random(16) + len(msg) as 4 bytes big-endian + msg + receive_id)))
    key           = base64decode(EncodingAESKey + "=")          # 43 letters and digits -> 32 bytes
    msg_signature = sha1(concat(sorted([token, timestamp, nonce, Encrypt])))

and wraps it in an envelope `<xml><AppId>..</AppId><Encrypt>..</Encrypt></xml>` (system pushes name the
platform in AppId; delegated messages carry ToUserName instead). `receive_id` is the platform's
component_appid (a WeCom corpid for WeCom callbacks): a message sealed for another receiver is refused.

`MessageCrypt.open_push` checks a push in the order that keeps forgeries cheap: the envelope parses
(no DOCTYPE, so no entity tricks), the signature matches (constant-time), the Encrypt opens with the
current EncodingAESKey or the previous one (WeChat's advice while a key is rotated), and names this
receiver. Each refusal is a `MessageRejected` with a `reason` code and a sentence that never holds a
key, the token or any plaintext. `seal_push` is the inverse, for the sandbox.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Mapping
from typing import Literal
from xml.parsers import expat

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

RejectReason = Literal["bad_xml", "bad_signature", "undecryptable", "wrong_appid"]

# WXBizMsgCrypt pads to 32 bytes (K=32), not to AES's 16: PKCS7(256) checks pad values 1..32 exactly.
_PAD_BITS = 256
_RANDOM_LEN = 16
_LENGTH = struct.Struct(">I")
_AES_KEY = re.compile(r"[A-Za-z0-9]{43}")
_TAG = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# What XML 1.0 cannot carry at all, not even in CDATA.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class MessageRejected(Exception):
    """A push we refuse; `reason` is one of: "bad_xml", "bad_signature", "undecryptable", "wrong_appid".

    str() is a sentence safe to log and to answer: it names what was wrong, never a key or plaintext.
    """

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason


def message_signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """WeChat's msg_signature: sha1 of the four values sorted and concatenated, as 40 lowercase hex.

    With `encrypt=""` it is the plain-mode URL `signature` (sha1 of token, timestamp and nonce sorted).
    """
    plain = "".join(sorted((token, timestamp, nonce, encrypt)))
    return hashlib.sha1(plain.encode("utf-8")).hexdigest()  # noqa: S324 (WeChat's algorithm, not our choice)


def check_aes_key(value: str) -> None:
    """Refuse anything but an EncodingAESKey: 43 letters and digits that decode to a 32-byte AES key.

    The ValueError's message tells what is wrong with the value without showing any of it.
    """
    if len(value) != 43:
        raise ValueError(f"an EncodingAESKey is 43 letters and digits; this one has {len(value)} characters")
    if _AES_KEY.fullmatch(value) is None:
        at = next(i for i, char in enumerate(value) if not (char.isascii() and char.isalnum()))
        raise ValueError(f"an EncodingAESKey is 43 letters and digits (A-Z, a-z, 0-9); character {at + 1} is not one")
    if len(_aes_key(value)) != 32:  # cannot happen for 43 such characters; the algorithm's own check
        raise ValueError("an EncodingAESKey must decode to 32 bytes")


def _aes_key(value: str) -> bytes:
    return base64.b64decode(value + "=")


class MessageCrypt:
    """Seals and opens messages for one receiver (a platform's component_appid) with its token and keys.

    `previous_aes_key` is the EncodingAESKey before the last rotation: messages sealed with it still
    open; whatever is sealed here uses the current key.
    """

    __slots__ = ("_keys", "_token", "receive_id")

    def __init__(self, *, token: str, aes_key: str, receive_id: str, previous_aes_key: str | None = None) -> None:
        check_aes_key(aes_key)
        if previous_aes_key is not None:
            check_aes_key(previous_aes_key)
        self._token = token
        self.receive_id = receive_id
        keys = [_aes_key(aes_key)]
        if previous_aes_key is not None and previous_aes_key != aes_key:
            keys.append(_aes_key(previous_aes_key))
        self._keys = tuple(keys)

    def __repr__(self) -> str:
        return f"MessageCrypt(receive_id={self.receive_id!r})"

    # -- Encrypt values --------------------------------------------------------------------------

    def encrypt(self, message: bytes, *, random16: bytes | None = None) -> str:
        """The base64 Encrypt of `message` for this receiver, with the current key.

        `random16` is the 16 random bytes WeChat puts in front (fixed only to reproduce test vectors).
        """
        prefix = os.urandom(_RANDOM_LEN) if random16 is None else random16
        if len(prefix) != _RANDOM_LEN:
            raise ValueError(f"random16 must be {_RANDOM_LEN} bytes, not {len(prefix)}")
        padder = padding.PKCS7(_PAD_BITS).padder()
        plain = padder.update(prefix + _LENGTH.pack(len(message)) + message + self.receive_id.encode("utf-8"))
        plain += padder.finalize()
        encryptor = _cipher(self._keys[0]).encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")

    def decrypt(self, encrypt: str) -> bytes:
        """The message inside `encrypt`, opened with the current key, else the previous one.

        MessageRejected "wrong_appid" when it opens but was sealed for another receiver, "undecryptable"
        when it opens with neither key (bad base64, bad length, bad padding, a length past the end).
        """
        try:
            sealed = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError):
            raise MessageRejected("undecryptable", "the Encrypt value is not base64") from None
        if not sealed or len(sealed) % (_PAD_BITS // 8):
            raise MessageRejected("undecryptable", "the Encrypt value is not whole 32-byte blocks")
        wrong_receiver = False
        for key in self._keys:
            opened = _open(key, sealed)
            if opened is None:
                continue
            message, receive_id = opened
            if hmac.compare_digest(receive_id, self.receive_id.encode("utf-8")):
                return message
            wrong_receiver = True
        if wrong_receiver:
            raise MessageRejected("wrong_appid", f"the message was sealed for another receiver than {self.receive_id}")
        raise MessageRejected("undecryptable", "the Encrypt value does not open with the EncodingAESKey "
                              "(nor the previous one)")  # fmt: skip

    # -- pushes (envelope XML) -------------------------------------------------------------------

    def open_push(self, body: bytes, *, timestamp: str, nonce: str, msg_signature: str) -> dict[str, str]:
        """The fields of a push (the decrypted XML's direct children, tag -> text) once its envelope
        parses, its msg_signature matches and its Encrypt opens for this receiver; else MessageRejected."""
        envelope = _fields(body, "the push")
        encrypt = envelope.get("Encrypt", "")
        if not encrypt:
            raise MessageRejected("bad_xml", "the push has no Encrypt element")
        expected = message_signature(self._token, timestamp, nonce, encrypt)
        # Bytes: compare_digest refuses a str with non-ASCII characters instead of saying False.
        if not hmac.compare_digest(expected.encode("ascii"), msg_signature.encode("utf-8")):
            raise MessageRejected("bad_signature", "the msg_signature does not match (check the message token)")
        return _fields(self.decrypt(encrypt), "the decrypted message")

    def seal_push(
        self, fields: Mapping[str, str], *, timestamp: str, nonce: str, random16: bytes | None = None
    ) -> tuple[bytes, str]:
        """What WeChat POSTs for `fields`: the envelope XML and its msg_signature (for the sandbox).

        Every value goes in CDATA; a tag must be an XML name and a value XML text, else ValueError.
        """
        inner = "".join(_element(tag, value) for tag, value in fields.items())
        encrypt = self.encrypt(f"<xml>{inner}</xml>".encode(), random16=random16)
        envelope = f"<xml>{_element('AppId', self.receive_id)}{_element('Encrypt', encrypt)}</xml>"
        return envelope.encode("utf-8"), message_signature(self._token, timestamp, nonce, encrypt)


def _cipher(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def _open(key: bytes, sealed: bytes) -> tuple[bytes, bytes] | None:
    """(message, receive_id) inside `sealed` with `key`; None when it does not open as WXBizMsgCrypt's layout."""
    decryptor = _cipher(key).decryptor()
    unpadder = padding.PKCS7(_PAD_BITS).unpadder()
    try:
        plain = unpadder.update(decryptor.update(sealed) + decryptor.finalize()) + unpadder.finalize()
    except ValueError:  # the pad bytes are not 1..32 copies of their count
        return None
    head = _RANDOM_LEN + _LENGTH.size
    if len(plain) < head:
        return None
    (length,) = _LENGTH.unpack_from(plain, _RANDOM_LEN)
    if length > len(plain) - head:
        return None
    return plain[head : head + length], plain[head + length :]


def _element(tag: str, value: str) -> str:
    if _TAG.fullmatch(tag) is None:
        raise ValueError(f"{tag[:40]!r} is not an XML element name")
    if _NOT_XML.search(value) is not None:
        raise ValueError(f"the value of {tag} holds a character XML cannot carry")
    # "]]>" would end the section: close it between "]]" and ">" and open another.
    return f"<{tag}><![CDATA[{value.replace(']]>', ']]]]><![CDATA[>')}]]></{tag}>"


class _Refused(Exception):
    """A document we do not parse further (a DOCTYPE, and with it any entity declaration)."""


class _FieldReader:
    """Collects the text of the root's direct children with expat, refusing any DOCTYPE.

    expat itself (>= 2.4.1) stops entity-expansion bombs; refusing the DOCTYPE means no entity is
    ever declared, so none is expanded and no external one is fetched.
    """

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self._depth = 0
        self._tag = ""
        self._text: list[str] = []

    def read(self, document: bytes) -> dict[str, str]:
        parser = expat.ParserCreate()
        parser.StartDoctypeDeclHandler = self._refuse
        parser.EntityDeclHandler = self._refuse
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        parser.Parse(document, True)
        return self.fields

    def _refuse(self, *_: object) -> None:
        raise _Refused

    def _start(self, tag: str, _attributes: dict[str, str]) -> None:
        self._depth += 1
        if self._depth == 2:
            self._tag, self._text = tag, []

    def _end(self, _tag: str) -> None:
        if self._depth == 2:
            self.fields.setdefault(self._tag, "".join(self._text))  # the first of a repeated tag counts
        self._depth -= 1

    def _characters(self, data: str) -> None:
        if self._depth == 2:  # a child's own text (CDATA or plain), not its children's
            self._text.append(data)


def _fields(document: bytes, what: str) -> dict[str, str]:
    try:
        return _FieldReader().read(document)
    except _Refused:
        raise MessageRejected("bad_xml", f"{what} declares a DOCTYPE, which WeChat never sends") from None
    except expat.ExpatError as exc:
        # expat's message names a line and column, never the document's content.
        raise MessageRejected("bad_xml", f"{what} is not well-formed XML ({expat.ErrorString(exc.code)})") from None
