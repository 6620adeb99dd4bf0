"""Who may use NATS and how a client proves it: the users of rtem's embedded server (rtem, producer,
and one `target` or named target users) with their permissions, inboxes and generated passwords, and the nats-py connect options for a
`NatsAuth` (credentials file, nkey seed, token, user and password, TLS). docs/nats.md."""

from __future__ import annotations

import json
import os
import secrets
import ssl
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._processes import NatsServerError
from ._streams import EVENTS_SUBJECTS, NatsAuth


RTEM_USER = "rtem"


PRODUCER = "producer"


TARGET = "target"


CREDENTIALS_FILE = "credentials.json"


# Every user's replies come to inboxes of its own: `_INBOX.<user>.…` (`inbox_prefix`), so a producer, which
# may read its own inbox for JetStream's acks, cannot read the replies meant for rtem.
INBOX = "_INBOX"


def inbox_prefix(user: str | None) -> str:
    """Where `user`'s replies arrive: `_INBOX.<user>` (nats-py's `inbox_prefix`); `_INBOX` for no user."""
    return f"{INBOX}.{user}" if user else INBOX


COMMANDS = "rtem.cmd."


def _target(subjects: Sequence[str]) -> dict:
    # Receive the commands of `subjects` and answer each one once, on the reply subject rtem gave: nothing else.
    return {"publish": {"deny": [">"]}, "subscribe": {"allow": list(subjects)}, "allow_responses": {"max": 1}}


def permissions(targets: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict]:
    """What each user of an authenticating server may do; rtem's own user is not limited.

    Without `targets`, one user `target` receives every command (`rtem.cmd.>`). With them, each named
    target user receives only the command subjects given (`rtem.cmd.<action>.<target>`, wildcards
    allowed), so only the agent a command is meant for can answer it, and there is no shared `target`."""
    users: dict[str, dict] = {
        RTEM_USER: {},
        # Publish events, and a line too large for the bus to the DLQ (as `Bus.publish_lines` does); the
        # JetStream ack comes back on the producer's own inbox.
        PRODUCER: {"publish": {"allow": [EVENTS_SUBJECTS, "rtem.dlq.invalid"]},
                   "subscribe": {"allow": [f"{inbox_prefix(PRODUCER)}.>"]}},
    }
    for name, subjects in (targets or {TARGET: [f"{COMMANDS}>"]}).items():
        if name in users or not name or any(c in name for c in " .*>\t\n\"'"):
            raise NatsServerError(f"NATS target user {name!r}: a target needs a name of its own "
                                  f"(not {RTEM_USER} or {PRODUCER}, no spaces, dots or wildcards)")
        outside = [s for s in subjects if not s.startswith(COMMANDS) or " " in s]
        if not subjects or outside:
            raise NatsServerError(f"NATS target user {name!r}: give it command subjects under {COMMANDS}> "
                                  f"(not {', '.join(outside) or 'none'})")
        users[name] = _target(subjects)
    return users


def embedded_credentials(data_dir: str | Path, user: str) -> NatsAuth | None:
    """The user's credentials for the authenticating server of `data_dir`; None if it has none."""
    path = Path(data_dir) / CREDENTIALS_FILE
    if not path.is_file():
        return None
    passwords = json.loads(path.read_text())
    if user not in passwords:
        raise NatsServerError(f"{path} has no user {user!r} (it has {', '.join(sorted(passwords))})")
    return NatsAuth(user=user, password=passwords[user])


def _passwords(data_dir: Path, users: Collection[str]) -> dict[str, str]:
    """Each user's password, made once and kept, so producers and targets configured with one go on working;
    a user no longer configured loses its password."""
    path = data_dir / CREDENTIALS_FILE
    passwords = json.loads(path.read_text()) if path.is_file() else {}
    if set(passwords) != set(users):
        passwords = {user: passwords.get(user) or secrets.token_urlsafe(32) for user in users}
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
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(auth.user)} if auth.user else {}
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
