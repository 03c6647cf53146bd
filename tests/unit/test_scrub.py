"""Scrubber: every covered form of a key is removed, and nothing else is touched."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

import pytest

from rolegate_gateway.scrub import Scrubber

KEY = "sk-proj-Ab3/dE+fG=hI9_jK~lM"
SCRUB = Scrubber([KEY])


def _json_escaped(text: str, *, upper: bool = False) -> str:
    return "".join(f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}" for c in text)


def _lower_hex(encoded: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda hexed: hexed[0].lower(), encoded)


FORMS = {
    "raw": KEY,
    "json escapes": _json_escaped(KEY),
    "json escapes, upper-case hex": _json_escaped(KEY, upper=True),
    "json, some characters escaped": _json_escaped(KEY[:3]) + KEY[3:11] + "\\/" + KEY[12:],
    "quote": quote(KEY),
    "quote safe=''": quote(KEY, safe=""),
    "quote_plus": quote_plus(KEY),
    "lower-case percent hex": _lower_hex(quote(KEY, safe="")),
    "percent-encoded throughout": "".join(f"%{b:02X}" for b in KEY.encode()),
    "hex": KEY.encode().hex(),
    "HEX": KEY.encode().hex().upper(),
}


@pytest.mark.parametrize("form", list(FORMS.values()), ids=list(FORMS))
def test_each_form_is_removed_and_the_rest_kept(form: str) -> None:
    body = f"before {form} after".encode()
    assert SCRUB.scrub(body) == b"before  after"


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"Bearer ", b"api-key:"])
@pytest.mark.parametrize("alphabet", ["standard", "urlsafe"])
@pytest.mark.parametrize("padded", [True, False])
def test_base64_at_every_alignment(prefix: bytes, alphabet: str, padded: bool) -> None:
    """Inside a longer encoded string the key's encoding depends on its offset mod 3; all
    but the one or two characters at each end that mix in the neighbours go."""
    encode = base64.b64encode if alphabet == "standard" else base64.urlsafe_b64encode
    for suffix in (b"", b"x", b"\nmore"):
        encoded = encode(prefix + KEY.encode() + suffix)
        if not padded:
            encoded = encoded.rstrip(b"=")
        scrubbed = SCRUB.scrub(b"token=" + encoded + b";")
        assert len(encoded) - (len(scrubbed) - len(b"token=;")) >= 4 * len(KEY) // 3 - 4
        for offset in range(3):
            core = encode(bytes(offset) + KEY.encode())[2:-2]
            for i in range(len(core) - 5):
                assert core[i : i + 6] not in scrubbed


def test_json_bodies_are_decoded_so_layered_forms_are_caught() -> None:
    b64 = base64.b64encode(KEY.encode()).decode()
    message = f"key {_json_escaped(b64)} and {_json_escaped(quote_plus(KEY))} end"
    body = ('{"error": {"message": "' + message + '", "code": "x"}}').encode()
    scrubbed = SCRUB.scrub(body)
    doc = json.loads(scrubbed)
    assert doc == {"error": {"message": "key  and  end", "code": "x"}}


def test_keys_of_json_objects_are_scrubbed_too() -> None:
    body = json.dumps({KEY: 1, "x": [KEY, {"k": KEY}]}).encode()
    assert json.loads(SCRUB.scrub(body)) == {"": 1, "x": ["", {"k": ""}]}


@pytest.mark.parametrize(
    "masked",
    [
        f"{KEY[:8]}{'*' * 30}{KEY[-4:]}",
        f"{KEY[:3]}…{KEY[-4:]}",
        f"{KEY[:6]}...{KEY[-4:]}",
        f"****{KEY[-4:]}",
    ],
)
def test_masked_forms_are_removed(masked: str) -> None:
    text = f"Incorrect API key provided: {masked}. You can find your API key at …"
    scrubbed = SCRUB.scrub(text.encode()).decode()
    assert scrubbed == "Incorrect API key provided: . You can find your API key at …"


def test_an_untouched_body_stays_byte_identical() -> None:
    body = b'{ "error" : {"message":"no key here \\u00e9", "code" : null} }'
    assert SCRUB.scrub(body) == body


def test_short_secrets_are_removed_raw_only() -> None:
    scrub = Scrubber(["EMPTY"])
    text = b"EMPTY %45MPTY RU1QVFk= \\u0045MPTY"
    assert scrub.scrub(text) == b" %45MPTY RU1QVFk= \\u0045MPTY"


def test_several_secrets_and_no_secret() -> None:
    other = "AKIAIOSFODNN7EXAMPLE"
    scrub = Scrubber([KEY, other])
    assert scrub.scrub(f"{quote(KEY)}|{other.lower().upper()}".encode()) == b"|"
    assert Scrubber([]).scrub(b"anything") == b"anything"


def test_deeply_nested_json_falls_back_to_the_raw_pass() -> None:
    body = b"[" * 100_000 + KEY.encode() + b"]" * 100_000
    assert KEY.encode() not in SCRUB.scrub(body)


def test_a_json_body_with_a_lone_surrogate_and_deep_nesting_is_scrubbed_not_raised() -> None:
    scrubber = Scrubber([KEY])
    body = json.dumps({"error": {"message": f"bad key {KEY}", "x": "\ud800"}}).encode()
    clean = scrubber.scrub(body)
    assert KEY.encode() not in clean
    assert json.loads(clean)["error"]["x"] == "\ud800"
    deep = b"[" * 5000 + json.dumps(KEY).encode() + b"]" * 5000
    assert KEY.encode() not in scrubber.scrub(deep)
