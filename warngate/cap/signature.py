"""XML signatures on CAP messages (XML-DSig, enveloped).

A signature is *verified* only against certificates the operator trusts for that sender
(``cap.trust`` in the configuration); a certificate embedded in the message proves nothing
by itself. Without trusted certificates for the sender a signed message is accepted and
reported as unverified; with them, a signature that does not verify is refused.
Certificates are checked for validity at the message's ``sent`` time, not now: most
publishers' certificates have expired since the message was signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from warngate.cap.model import CapAlert

Outcome = Literal["unsigned", "verified", "unverified", "invalid"]


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    outcome: Outcome
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.outcome}: {self.detail}" if self.detail else self.outcome


def verify_signature(cap: CapAlert, trusted_pems: list[str] | tuple[str, ...]) -> SignatureCheck:
    if not cap.signed:
        return SignatureCheck("unsigned")
    if not trusted_pems:
        return SignatureCheck("unverified", f"no trusted certificate for sender {cap.sender}")
    # Imported here: only signed messages from trusted senders need it.
    from signxml.exceptions import InvalidInput, InvalidSignature
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    reasons = []
    for pem in trusted_pems:
        try:
            XMLVerifier().verify(cap.raw, x509_cert=pem, expect_config=SignatureConfiguration(
                verification_time=cap.sent))
            return SignatureCheck("verified")
        except (InvalidSignature, InvalidInput) as exc:
            reasons.append(str(exc) or type(exc).__name__)
        except Exception as exc:  # corrupted certificates and the like: not verified
            reasons.append(f"{type(exc).__name__}: {exc}")
    return SignatureCheck("invalid", "; ".join(dict.fromkeys(reasons))[:500])
