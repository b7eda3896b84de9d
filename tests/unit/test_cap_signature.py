"""XML signatures: verified only against certificates trusted for the sender."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from warngate.cap import parse_cap, verify_signature

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cap"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                  reason=f"real CAP samples not found at {SHARED}")


def embedded_pem(data: bytes) -> str:
    m = re.search(rb"<(?:\w+:)?X509Certificate>([^<]+)</", data)
    assert m is not None
    body = re.sub(r"\s+", "", m.group(1).decode())
    return ("-----BEGIN CERTIFICATE-----\n" + "\n".join(textwrap.wrap(body, 64))
            + "\n-----END CERTIFICATE-----\n")


def test_unsigned_and_untrusted() -> None:
    cap = parse_cap((FIXTURES / "red-rainstorm-zh-en.xml").read_bytes())
    assert verify_signature(cap, ["whatever"]).outcome == "unsigned"


@needs_shared
def test_ipaws_signature_verifies_with_the_trusted_certificate() -> None:
    data = (SHARED / "valid" / "us-ipaws-local-area-emergency-polygon.xml").read_bytes()
    cap = parse_cap(data)
    check = verify_signature(cap, [])
    assert check.outcome == "unverified" and cap.sender in check.detail
    assert verify_signature(cap, [embedded_pem(data)]).outcome == "verified"


@needs_shared
@pytest.mark.parametrize("name", ["sc-seychelles-invalid-signature.xml",
                                  "sc-seychelles-invalid-digest.xml",
                                  "sc-seychelles-invalid-certificate.xml"])
def test_tampered_signatures_do_not_verify(name: str) -> None:
    good = (SHARED / "valid" / "sc-seychelles-strong-winds-signed.xml").read_bytes()
    cap = parse_cap((SHARED / "signature-tampered" / name).read_bytes())
    check = verify_signature(cap, [embedded_pem(good)])
    assert check.outcome == "invalid" and check.detail


@needs_shared
def test_a_certificate_of_another_sender_does_not_verify() -> None:
    ipaws = (SHARED / "valid" / "us-ipaws-local-area-emergency-polygon.xml").read_bytes()
    athoc = (SHARED / "valid" / "us-athoc-cancel-no-info-signed.xml").read_bytes()
    other = embedded_pem(athoc)
    if other == embedded_pem(ipaws):
        pytest.skip("both samples carry the same certificate")
    assert verify_signature(parse_cap(ipaws), [other]).outcome == "invalid"
