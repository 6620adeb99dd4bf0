"""Who may use NATS and how a client proves it: the users of rtem's embedded server (rtem, producer,
target) with their permissions and generated passwords, and the nats-py connect options for a
`NatsAuth` (credentials file, nkey seed, token, user and password, TLS). docs/nats.md."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import ssl
from pathlib import Path
from typing import Any

from ._processes import NatsServerError
from ._streams import EVENTS_SUBJECTS, NatsAuth


RTEM_USER = "rtem"


PRODUCER = "producer"


TARGET = "target"


CREDENTIALS_FILE = "credentials.json"


# What each user of an authenticating server may do; rtem's own user is not limited.
PERMISSIONS: dict[str, dict] = {
    RTEM_USER: {},
    # Publish events, and a line too large for the bus to the DLQ (as `Bus.publish_lines` does); the
    # JetStream ack comes back on an inbox.
    PRODUCER: {"publish": {"allow": [EVENTS_SUBJECTS, "rtem.dlq.invalid"]}, "subscribe": {"allow": ["_INBOX.>"]}},
    # Receive commands and answer each one once, on the reply subject rtem gave: nothing else.
    TARGET: {"publish": {"deny": [">"]}, "subscribe": {"allow": ["rtem.cmd.>"]},
             "allow_responses": {"max": 1}},
}


def embedded_credentials(data_dir: str | Path, user: str) -> NatsAuth | None:
    """The user's credentials for the authenticating server of `data_dir`; None if it has none."""
    path = Path(data_dir) / CREDENTIALS_FILE
    if not path.is_file():
        return None
    passwords = json.loads(path.read_text())
    if user not in passwords:
        raise NatsServerError(f"{path} has no user {user!r} (it has {', '.join(sorted(passwords))})")
    return NatsAuth(user=user, password=passwords[user])


def _passwords(data_dir: Path) -> dict[str, str]:
    """Each user's password, made once and kept, so producers and targets configured with one go on working."""
    path = data_dir / CREDENTIALS_FILE
    passwords = json.loads(path.read_text()) if path.is_file() else {}
    if set(passwords) != set(PERMISSIONS):
        passwords = {user: passwords.get(user) or secrets.token_urlsafe(32) for user in PERMISSIONS}
        _write_private(path, json.dumps(passwords, indent=2) + "\n")
    return passwords


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


class NatsAuthError(ConnectionError):
    """The server refused the credentials, or they cannot be used as given."""


def connect_options(auth: NatsAuth) -> dict[str, Any]:
    """nats-py's `connect` keywords for `auth`: one way to authenticate, and TLS if a CA or a client
    certificate is given."""
    ways = [kind for kind, given in (("a credentials file", auth.creds), ("an nkey seed", auth.nkey_seed),
                                     ("a token", auth.token), ("a user", auth.user or auth.password)) if given]
    if len(ways) > 1:
        raise NatsAuthError(f"NATS credentials: set one of a credentials file, an nkey seed, a token or a user "
                            f"and password, not {' and '.join(ways)}")
    if bool(auth.user) != bool(auth.password):
        raise NatsAuthError("NATS credentials: a user needs a password, and a password a user")
    if bool(auth.tls_cert) != bool(auth.tls_key):
        raise NatsAuthError("NATS TLS: a client certificate needs its key, and a key its certificate")
    if (auth.creds or auth.nkey_seed) and importlib.util.find_spec("nkeys") is None:
        raise NatsAuthError("NATS credentials files and nkey seeds need the nkeys package: pip install nkeys")
    options: dict[str, Any] = {}
    if auth.creds:
        options["user_credentials"] = str(auth.creds)
    elif auth.nkey_seed:
        options["nkeys_seed"] = str(auth.nkey_seed)
    elif auth.token:
        options["token"] = auth.token
    elif auth.user:
        options.update(user=auth.user, password=auth.password)
    if auth.tls_ca or auth.tls_cert:
        context = ssl.create_default_context(cafile=str(auth.tls_ca) if auth.tls_ca else None)
        if auth.tls_cert:
            context.load_cert_chain(str(auth.tls_cert), str(auth.tls_key))
        options["tls"] = context
    return options


def _refused(exc: Exception) -> bool:
    return "authorization violation" in str(exc).lower() or isinstance(exc, ssl.SSLCertVerificationError)


def _auth_kind(auth: NatsAuth) -> str:
    if auth.creds:
        return f"credentials file {auth.creds}"
    if auth.nkey_seed:
        return f"nkey seed {auth.nkey_seed}"
    if auth.token:
        return "a token"
    return f"user {auth.user}" if auth.user else "no credentials"
