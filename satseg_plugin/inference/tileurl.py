"""XYZ and TileJSON imagery URLs: validation, filling, and keeping tokens secret.

Templates: ``{z}``, ``{x}``, ``{y}``, ``{-y}`` (TMS rows), ``{q}`` (quadkey),
``{s}`` (subdomain, ``a``/``b``/``c`` unless given) and ``{token}``; a URL
without ``{z}`` is read as a TileJSON document whose first ``tiles`` template
(and ``scheme``) is used. An access token comes from an environment variable
(``MapboxAccessToken`` by default) and is sent as ``access_token=`` (or in
place of ``{token}``); a token written into the URL itself (as QGIS stores
XYZ layers) is kept as it is. Neither ever appears in logs, files or messages:
``redact`` and ``strip_secrets`` remove them.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import mercantile
import requests

from .errors import SourceError

DEFAULT_TOKEN_ENV = "MapboxAccessToken"
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_KNOWN = {"z", "x", "y", "-y", "s", "q", "token"}
_SECRET_PARAMS = {"access_token", "token", "apikey", "api_key", "key"}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class TokenError(SourceError):
    """The service refused the access token (HTTP 401/403)."""


def redact(text: str, token: str | None) -> str:
    """``text`` with the token and any ``access_token=...`` value replaced by ``***``."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"(?i)((?:access_token|api_?key|token)=)[^&\s\"']+", r"\1***", text)


def strip_secrets(url: str) -> str:
    """``url`` without query parameters that carry secrets (for manifests and logs)."""
    parts = urlsplit(url)
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in _SECRET_PARAMS
    ]
    # Joined by hand: urlencode would escape the braces of {z}/{x}/{y}.
    text = "&".join(f"{k}={v}" if v else k for k, v in query)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, text, parts.fragment))


@dataclass
class TileTemplate:
    """A validated XYZ template and how to fill it."""

    template: str
    subdomains: tuple[str, ...] = ("a", "b", "c")
    tms: bool = False  # TileJSON scheme "tms": rows counted from the south
    token: str | None = None
    token_env: str = DEFAULT_TOKEN_ENV

    def url(self, x: int, y: int, z: int) -> str:
        values = {
            "z": str(z),
            "x": str(x),
            "y": str((1 << z) - 1 - y if self.tms else y),
            "-y": str((1 << z) - 1 - y),
            "q": mercantile.quadkey(x, y, z),
            "s": self.subdomains[(x + y) % len(self.subdomains)] if self.subdomains else "",
            "token": self.token or "",
        }
        url = _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], self.template)
        if self.token and "{token}" not in self.template:
            parts = urlsplit(url)
            query = parse_qsl(parts.query, keep_blank_values=True)
            if not any(k == "access_token" for k, _ in query):
                sep = "&" if parts.query else ""
                url = urlunsplit(
                    (
                        parts.scheme,
                        parts.netloc,
                        parts.path,
                        f"{parts.query}{sep}access_token={self.token}",
                        parts.fragment,
                    )
                )
        return url

    @property
    def public(self) -> str:
        """The template as it may be shown and stored: no token."""
        return strip_secrets(redact(self.template, self.token))


def check_template(url: str) -> None:
    """Raise ``SourceError`` unless ``url`` is an http(s) XYZ template or TileJSON URL."""
    parts = urlsplit(url)
    shown = strip_secrets(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SourceError(
            f"the imagery URL must be an http(s) URL template such as https://host/{{z}}/{{x}}/{{y}}.png, not {shown!r}"
        )
    names = _PLACEHOLDER_RE.findall(url)
    unknown = [n for n in names if n not in _KNOWN]
    if unknown:
        raise SourceError(
            f"the imagery URL has an unknown placeholder {{{unknown[0]}}} (known: {{z}} {{x}} {{y}} {{-y}} {{q}} {{s}} {{token}}): {shown}"
        )
    if url.count("{") != len(names) or url.count("}") != len(names):
        raise SourceError(f"the imagery URL has unbalanced braces: {shown}")
    if names and "q" not in names:
        missing = [n for n in ("z", "x") if n not in names]
        if "y" not in names and "-y" not in names:
            missing.append("y")
        if missing:
            raise SourceError(
                f"the imagery URL template lacks {{{missing[0]}}}: {shown} (e.g. https://host/{{z}}/{{x}}/{{y}}.png)"
            )


def resolve_template(
    url: str,
    token_env: str = DEFAULT_TOKEN_ENV,
    subdomains: str | None = None,
    session: requests.Session | None = None,
    timeout: float = 30.0,
) -> TileTemplate:
    """Validate ``url`` and read the token; fetch the TileJSON document when ``url`` is one."""
    check_template(url)
    token = os.environ.get(token_env) or None
    if "{token}" in url and not token:
        raise TokenError(f"the imagery URL needs an access token: set the environment variable {token_env}")
    subs = tuple(subdomains.split(",")) if subdomains else ("a", "b", "c")
    if "{z}" in url or "{q}" in url:
        return TileTemplate(url, subs, False, token, token_env)
    # A TileJSON document.
    probe = TileTemplate(url, subs, False, token, token_env)
    doc_url = probe.url(0, 0, 0)
    # A session made here is closed here, even when the document is refused; the caller's stays open.
    with requests.Session() if session is None else contextlib.nullcontext(session) as sess:
        try:
            resp = sess.get(doc_url, timeout=timeout)
        except requests.RequestException as exc:
            raise SourceError(
                f"cannot fetch the TileJSON document {probe.public}: {redact(str(exc), token)}"
            ) from None
        if resp.status_code in (401, 403):
            raise TokenError(token_message(resp.status_code, token_env, token))
        if resp.status_code != 200:
            raise SourceError(f"the TileJSON document {probe.public} answered HTTP {resp.status_code}")
        try:
            doc = resp.json()
            tiles = doc["tiles"]
            template = str(tiles[0])
        except (ValueError, KeyError, IndexError, TypeError):
            raise SourceError(
                f"{probe.public} is neither an XYZ template (no {{z}}/{{x}}/{{y}}) nor a TileJSON document with 'tiles'"
            ) from None
        check_template(template)
        if "{z}" not in template and "{q}" not in template:
            raise SourceError(f"the TileJSON document {probe.public} gives no usable tile template")
        return TileTemplate(template, subs, doc.get("scheme") == "tms", token, token_env)


def token_message(status: int, token_env: str, token: str | None) -> str:
    if token:
        return (
            f"the imagery service refused the access token (HTTP {status}): check the token in the "
            f"environment variable {token_env} (is it valid and allowed for this service?)"
        )
    return (
        f"the imagery service needs an access token (HTTP {status}): set the environment variable {token_env}"
    )
