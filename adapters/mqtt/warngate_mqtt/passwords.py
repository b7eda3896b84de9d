"""Mosquitto password files without ``mosquitto_passwd`` (which may not be installed where
the roster lives).

The format is Mosquitto 2's: ``user:$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>``.

    python -m warngate_mqtt.passwords passwd --user warngate --speakers speakers.txt
        # passwords from WARNGATE_MQTT_PASSWORD (gateway) and WARNGATE_SPEAKER_PASSWORD
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from warngate_mqtt.topics import TopicError, check_speaker_id

ITERATIONS = 101  # what mosquitto_passwd 2.0 writes


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = ITERATIONS) -> str:
    """The hash part of a password-file line."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def check_password(line: str, user: str, password: str) -> bool:
    """Whether ``line`` of a password file lets ``user`` in with ``password``."""
    name, _, hashed = line.strip().partition(":")
    parts = hashed.split("$")
    if name != user or len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    return secrets.compare_digest(hash_password(password, salt=salt,
                                                iterations=int(parts[2])), hashed)


def write_password_file(path: Path, users: Iterable[tuple[str, str]]) -> int:
    """Write ``(user, password)`` pairs; the file is readable by its owner only."""
    lines = []
    for user, password in users:
        if not user or ":" in user or "\n" in user:
            raise ValueError(f"user name {user!r} cannot be in a password file")
        if not password:
            raise ValueError(f"user {user!r} has an empty password")
        lines.append(f"{user}:{hash_password(password)}\n")
    path.write_text("".join(lines), encoding="utf-8")
    path.chmod(0o600)
    return len(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m warngate_mqtt.passwords",
        description="Write a Mosquitto password file for the gateway and the speakers.")
    parser.add_argument("out", type=Path, help="password file to write")
    parser.add_argument("--user", default="warngate", help="the gateway's user name")
    parser.add_argument("--speakers", type=Path, metavar="FILE",
                        help="speaker ids (= user names), one per line")
    parser.add_argument("--gateway-password-env", default="WARNGATE_MQTT_PASSWORD")
    parser.add_argument("--speaker-password-env", default="WARNGATE_SPEAKER_PASSWORD")
    args = parser.parse_args(argv)
    gw = os.environ.get(args.gateway_password_env, "")
    if not gw:
        print(f"error: set {args.gateway_password_env} to the gateway's password",
              file=sys.stderr)
        return 2
    users = [(args.user, gw)]
    if args.speakers is not None:
        sp = os.environ.get(args.speaker_password_env, "")
        if not sp:
            print(f"error: set {args.speaker_password_env} to the speakers' password",
                  file=sys.stderr)
            return 2
        try:
            lines = args.speakers.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            print(f"error: cannot read {args.speakers}: {exc.strerror}", file=sys.stderr)
            return 2
        for n, line in enumerate(lines, 1):
            sid = line.strip()
            if not sid or sid.startswith("#"):
                continue
            try:
                users.append((check_speaker_id(sid), sp))
            except TopicError as exc:
                print(f"error: {args.speakers}:{n}: {exc}", file=sys.stderr)
                return 2
    n = write_password_file(args.out, users)
    print(f"wrote {n} users to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
