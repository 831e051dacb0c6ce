"""The daemon's bearer token: read from an env variable or a file (created 0600 on first start), never logged."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

DEFAULT_TOKEN_ENV = "ROBOPOLICY_DEPLOY_TOKEN"
DEFAULT_TOKEN_FILE = "~/.config/robopolicy/deploy_token"


class TokenError(RuntimeError):
    """No usable token (unreadable file, empty value, too permissive file)."""


def load_token(token_file: str | Path | None = DEFAULT_TOKEN_FILE, env: str = DEFAULT_TOKEN_ENV,
               create: bool = False) -> str:
    """The token from `$env` if set, else from `token_file`; with `create`, a fresh random token is written
    there (mode 0600) when the file does not exist. The value is never printed or logged."""
    value = os.environ.get(env, "").strip()
    if value:
        return value
    if token_file is None:
        raise TokenError(f"no token: set ${env} or give a token file")
    path = Path(token_file).expanduser()
    if not path.exists():
        if not create:
            raise TokenError(f"no token: ${env} is not set and {path} does not exist; start the daemon once "
                             f"(`robopolicy deploy serve` creates it) or set ${env}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise TokenError(f"{path} is readable by other users; run `chmod 600 {path}`")
    value = path.read_text().strip()
    if not value:
        raise TokenError(f"{path} is empty; delete it to have a new token generated, or write one into it")
    return value


def token_matches(header: str | None, token: str) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())
