"""WXBizMsgCrypt: the published test vectors, the push envelope both ways, and every refusal."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from jssdk_service.msgcrypt import MessageCrypt, MessageRejected, check_aes_key, message_signature

# V1: the official Java sample (WECOM_PLATFORM.md B.1).
V1_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
V1_TOKEN = "pamtest"
V1_APPID = "wxb11529c136998cb6"
V1_PLAIN = "我是中文abcd123".encode()
V1_ENCRYPT = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="

# V2: wechatpy's tests/test_crypto.py (WeCom; receiveid = the corp id).
V2_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
V2_TOKEN = "123456"
V2_ID = "wx49f0ab532d5d035a"
V2_ECHOSTR = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="
V2_ENCRYPT = (
    "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymz"
    "xh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIi"
    "OAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvc"
    "cTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0="
)
V2_REPLY = """<xml>
<MsgType><![CDATA[text]]></MsgType>
<Content><![CDATA[test]]></Content>
<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>
<ToUserName><![CDATA[messense]]></ToUserName>
<AgentID>1</AgentID>
<CreateTime>1411525903</CreateTime>
</xml>"""
V2_REPLY_ENCRYPT = (
    "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtOb"
    "vesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8"
    "NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O"
    "5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
)

OLD_KEY = "OldEncodingAESKey0123456789abcdefghijklmnop"
APPID = "wx0000000000component"


def v1() -> MessageCrypt:
    return MessageCrypt(token=V1_TOKEN, aes_key=V1_KEY, receive_id=V1_APPID)


def v2() -> MessageCrypt:
    return MessageCrypt(token=V2_TOKEN, aes_key=V2_KEY, receive_id=V2_ID)


def sealed_raw(aes_key: str, plain: bytes) -> str:
    """`plain` (already padded by the caller, however wrongly) encrypted as WXBizMsgCrypt does."""
    key = base64.b64decode(aes_key + "=")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def rejected(reason: str, call: object, *args: object, **kwargs: object) -> MessageRejected:
    assert callable(call)
    with pytest.raises(MessageRejected) as caught:
        call(*args, **kwargs)
    assert caught.value.reason == reason, str(caught.value)
    return caught.value


# -- the published vectors ------------------------------------------------------------------


def test_v1_encrypt_gives_the_official_encrypt_and_signature() -> None:
    """With the Java sample's random prefix, encrypting its plaintext gives exactly its Encrypt and msg_signature."""
    encrypt = v1().encrypt(V1_PLAIN, random16=b"aaaabbbbccccdddd")
    assert encrypt == V1_ENCRYPT
    assert message_signature(V1_TOKEN, "1409304348", "xxxxxx", encrypt) == "82c962d39941aa48552f90ef55aa323dc620cc10"


def test_v1_decrypt_gives_the_plaintext() -> None:
    """The Java sample's Encrypt opens to its UTF-8 plaintext."""
    assert v1().decrypt(V1_ENCRYPT) == V1_PLAIN


def test_v2_echostr_signature_and_plaintext() -> None:
    """wechatpy's echostr has the published signature and opens, for its receiveid, to 5927782489442352469."""
    assert message_signature(V2_TOKEN, "1411443780", "437374425", V2_ECHOSTR) == (
        "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96"
    )
    assert v2().decrypt(V2_ECHOSTR) == b"5927782489442352469"
    other = MessageCrypt(token=V2_TOKEN, aes_key=V2_KEY, receive_id="wx0000000000000000")
    rejected("wrong_appid", other.decrypt, V2_ECHOSTR)


def test_v2_push_opens_to_its_fields() -> None:
    """wechatpy's full encrypted message passes its signature and opens to Content `test` from `messense`."""
    body = (f"<xml><ToUserName><![CDATA[{V2_ID}]]></ToUserName>\n<Encrypt><![CDATA[{V2_ENCRYPT}]]></Encrypt>\n"
            "<AgentID><![CDATA[1]]></AgentID>\n</xml>").encode()  # fmt: skip
    fields = v2().open_push(body, timestamp="1411525903", nonce="461056294",
                            msg_signature="74d92dfeb87ba7c714f89d98870ae5eb62dff26d")  # fmt: skip
    assert fields["Content"] == "test" and fields["FromUserName"] == "messense"


def test_v2_encrypt_gives_wechatpys_reply() -> None:
    """With wechatpy's fixed random prefix, its reply encrypts to exactly its Encrypt and MsgSignature."""
    encrypt = v2().encrypt(V2_REPLY.encode(), random16=b"1234567890123456")
    assert encrypt == V2_REPLY_ENCRYPT
    assert message_signature(V2_TOKEN, "1411525903", "461056294", encrypt) == (
        "407518b7649e86ef23978113f92d27afa9296533"
    )


def test_v3_plain_mode_url_signature() -> None:
    """With no Encrypt, the signature is the plain-mode URL signature of the docs' example."""
    assert message_signature("AAAAA", "1714037059", "486452656", "") == "899cf89e464efb63f54ddac96b0a0a235f53aa78"


# -- pushes both ways -----------------------------------------------------------------------


def test_seal_push_and_open_push_round_trip() -> None:
    """A sealed push opens to the same fields, CDATA terminators, markup and empty values included."""
    crypt = MessageCrypt(token="message-token", aes_key=V2_KEY, receive_id=APPID)
    fields = {"AppId": APPID, "CreateTime": "1700000000", "InfoType": "component_verify_ticket",
              "ComponentVerifyTicket": "ticket@@@a]]>b<c>&d", "Empty": "", "Chinese": "授权"}  # fmt: skip
    body, signature = crypt.seal_push(fields, timestamp="1700000000", nonce="12345")
    assert body.startswith(f"<xml><AppId><![CDATA[{APPID}]]></AppId><Encrypt><![CDATA[".encode())
    assert b"ticket@@@" not in body
    assert crypt.open_push(body, timestamp="1700000000", nonce="12345", msg_signature=signature) == fields


def test_a_push_sealed_with_the_previous_key_opens_after_rotation() -> None:
    """After a rotation both keys open, the current one seals, and a crypt without the previous key refuses."""
    before = MessageCrypt(token="t", aes_key=OLD_KEY, receive_id=APPID)
    after = MessageCrypt(token="t", aes_key=V2_KEY, receive_id=APPID, previous_aes_key=OLD_KEY)
    assert after.decrypt(before.encrypt(b"old")) == b"old"
    body, signature = before.seal_push({"InfoType": "x"}, timestamp="1", nonce="2")
    assert after.open_push(body, timestamp="1", nonce="2", msg_signature=signature) == {"InfoType": "x"}
    rejected("undecryptable", before.decrypt, after.encrypt(b"new"))
    rejected("undecryptable", MessageCrypt(token="t", aes_key=V2_KEY, receive_id=APPID).decrypt, before.encrypt(b"x"))


# -- refusals -------------------------------------------------------------------------------


def test_a_message_for_another_receiver_is_wrong_appid() -> None:
    """A message sealed with our key for another appid is refused as wrong_appid, with the previous key too."""
    other = MessageCrypt(token="t", aes_key=OLD_KEY, receive_id="wx00000000000other")
    ours = MessageCrypt(token="t", aes_key=V2_KEY, receive_id=APPID, previous_aes_key=OLD_KEY)
    error = rejected("wrong_appid", ours.decrypt, other.encrypt(b"hello"))
    assert "wx00000000000other" not in str(error)


def test_tampered_ciphertext_is_undecryptable() -> None:
    """Flipping a byte (in the length block or in the padding block) makes the message undecryptable."""
    sealed = bytearray(base64.b64decode(V1_ENCRYPT))
    for at in (0, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[at] ^= 0x01
        rejected("undecryptable", v1().decrypt, base64.b64encode(bytes(tampered)).decode())


@pytest.mark.parametrize("pad", [0, 33, 255])
def test_pad_bytes_outside_1_to_32_are_undecryptable(pad: int) -> None:
    """A last byte of 0 or over 32 is not WXBizMsgCrypt's padding."""
    plain = b"0123456789abcdef" + (5).to_bytes(4, "big") + b"hello" + V1_APPID.encode()
    plain += bytes([pad]) * (64 - len(plain))
    rejected("undecryptable", v1().decrypt, sealed_raw(V1_KEY, plain))


def test_a_length_past_the_end_is_undecryptable() -> None:
    """A message length larger than what follows it is refused, however well padded."""
    plain = b"0123456789abcdef" + (1000).to_bytes(4, "big") + b"hello" + V1_APPID.encode()
    pad = 32 - len(plain) % 32
    rejected("undecryptable", v1().decrypt, sealed_raw(V1_KEY, plain + bytes([pad]) * pad))


@pytest.mark.parametrize("value", ["not base64!", "AAAA", "", V1_ENCRYPT[:-4], "=" + V1_ENCRYPT])
def test_bad_base64_or_length_is_undecryptable(value: str) -> None:
    """Text that is not base64, or not whole 32-byte blocks, is refused before any decryption."""
    rejected("undecryptable", v1().decrypt, value)


def test_a_wrong_signature_is_refused() -> None:
    """A msg_signature of other values, another token, or non-ASCII text is bad_signature."""
    body, signature = v1().seal_push({"InfoType": "x"}, timestamp="1", nonce="2")
    rejected("bad_signature", v1().open_push, body, timestamp="1", nonce="3", msg_signature=signature)
    rejected("bad_signature", v1().open_push, body, timestamp="1", nonce="2", msg_signature="签名" * 20)
    other_token = MessageCrypt(token="other", aes_key=V1_KEY, receive_id=V1_APPID)
    rejected("bad_signature", other_token.open_push, body, timestamp="1", nonce="2", msg_signature=signature)


def test_doctype_and_malformed_envelopes_are_bad_xml() -> None:
    """A DOCTYPE (with or without entities), broken XML and a missing Encrypt are bad_xml before the signature."""
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            b"<xml><Encrypt>&b;</Encrypt></xml>")  # fmt: skip
    external = b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><xml><Encrypt>x</Encrypt></xml>'
    for body in (bomb, external, b"<xml><Encrypt>", b"", b"<xml><AppId>x</AppId></xml>", b"<xml>&undefined;</xml>"):
        rejected("bad_xml", v1().open_push, body, timestamp="1", nonce="2", msg_signature="0" * 40)


def test_a_decrypted_message_that_is_not_xml_is_bad_xml() -> None:
    """A correctly sealed and signed Encrypt whose message is not XML is refused as bad_xml."""
    encrypt = v1().encrypt(b"<!DOCTYPE x><xml/>")
    body = f"<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode()
    signature = message_signature(V1_TOKEN, "1", "2", encrypt)
    rejected("bad_xml", v1().open_push, body, timestamp="1", nonce="2", msg_signature=signature)


def test_aes_keys_are_checked_without_showing_them() -> None:
    """Only 43 letters and digits are an EncodingAESKey; the error names the problem, never the value."""
    check_aes_key(V1_KEY)
    for bad in (V1_KEY[:42], V1_KEY + "H", V1_KEY[:42] + "+", V1_KEY[:42] + "é"):
        with pytest.raises(ValueError) as caught:
            check_aes_key(bad)
        assert V1_KEY[:20] not in str(caught.value)
    with pytest.raises(ValueError, match="character 43 is not one"):
        MessageCrypt(token="t", aes_key=V1_KEY[:42] + "-", receive_id=APPID)


def test_no_secret_or_plaintext_in_reprs_or_errors() -> None:
    """Neither the token, the keys nor the plaintext appear in a MessageCrypt's repr or in any refusal."""
    token = "very-secret-message-token"
    crypt = MessageCrypt(token=token, aes_key=V2_KEY, receive_id=APPID, previous_aes_key=OLD_KEY)
    assert repr(crypt) == f"MessageCrypt(receive_id={APPID!r})"
    plaintext = "ticket@@@the-verify-ticket-itself"
    body, signature = crypt.seal_push({"ComponentVerifyTicket": plaintext}, timestamp="1", nonce="2")
    wrong_receiver = MessageCrypt(token=token, aes_key=V2_KEY, receive_id="wx00000000000other")
    errors = [
        rejected("bad_signature", crypt.open_push, body, timestamp="1", nonce="9", msg_signature=signature),
        rejected("wrong_appid", wrong_receiver.open_push, body, timestamp="1", nonce="2", msg_signature=signature),
        rejected("undecryptable", MessageCrypt(token=token, aes_key=V1_KEY, receive_id=APPID).open_push, body,
                 timestamp="1", nonce="2", msg_signature=signature),
        rejected("bad_xml", crypt.open_push, body[:-3], timestamp="1", nonce="2", msg_signature=signature),
    ]  # fmt: skip
    for error in errors:
        for secret in (token, V2_KEY, OLD_KEY, plaintext):
            assert secret not in str(error) and secret not in repr(error)
