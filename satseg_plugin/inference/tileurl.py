"""XYZ and TileJSON imagery URLs: validation, filling, and keeping tokens secret.

Templates: ``{z}``, ``{x}``, ``{y}``, ``{-y}`` (TMS rows), ``{q}`` (quadkey),
``{s}`` (subdomain, ``a``/``b``/``c`` unless given) and ``{token}``; a URL
without ``{z}`` is read as a TileJSON document whose first ``tiles`` template
(and ``scheme``) is used. An access token comes from an environment variable
(``MapboxAccessToken`` by default) and is sent as ``access_token=`` (or in
place of ``{token}``), percent-encoded, and only to the host the user gave
(not to another host a TileJSON document names, unless allowed); a token
written into the URL itself (as QGIS stores XYZ layers) is kept as it is.
Neither ever appears in logs, files or messages: ``redact`` is the one
function that hides secrets, and ``strip_secrets`` (which ends in it) gives
the form of a URL that manifests store.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

from .errors import SourceError

# mercantile and requests are imported where they are used: the plugin's modules import this
# one (redact) when QGIS loads the plugin, before the dependency check can tell the user that
# QGIS's Python lacks them (a top-level import made loading fail, tests/test_gui_segment_extent.py).
if TYPE_CHECKING:
    import requests

DEFAULT_TOKEN_ENV = "MapboxAccessToken"
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_KNOWN = {"z", "x", "y", "-y", "s", "q", "token"}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}

#: A query parameter is secret when its name ends in one of these words: access_token, token,
#: key (MapTiler), apikey, api_key, subscription-key, sig (Azure SAS), X-Amz-Signature, ...
_SECRET_WORDS = "token|key|sig|signature|secret|password|passwd|pwd|auth|credential|credentials"
_SECRET_NAME_RE = re.compile(rf"(?i)[\w.-]*(?:{_SECRET_WORDS})")
_PARAM_RE = re.compile(rf"(?i)(?<![\w.-])([\w.-]*(?:{_SECRET_WORDS})=)[^&\s\"'<>]+")
# The same inside a percent-encoded URL (one URL passed as a parameter of another): key%3D...%26
_ENCODED_PARAM_RE = re.compile(rf"(?i)(?<![\w.-])([\w.-]*(?:{_SECRET_WORDS})%3D)(?:(?!%26)[^&\s\"'<>])+")
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]*@")
_ENCODED_USERINFO_RE = re.compile(r"(?i)(%3A%2F%2F)[^/\s@?#&]*?%40")


class TokenError(SourceError):
    """The service refused the access token (HTTP 401/403)."""


def redact(text: str, token: str | None = None) -> str:
    """``text`` with every secret replaced by ``***``: the one redaction of satseg.

    Every message, log line, manifest and CSV that may hold a URL goes through
    it. It hides ``token`` (as given and percent-encoded), the values of
    secret query parameters (``access_token=``, ``token=``, ``key=``,
    ``apikey=``, ``api_key=``, ``sig=``, ``signature=``... also
    percent-encoded inside another URL) and the ``user:password@`` of URLs.
    """
    if token:
        forms = {token, quote(token, safe=""), quote_plus(token, safe=""), quote(token)}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
    text = _PARAM_RE.sub(r"\1***", text)
    text = _ENCODED_PARAM_RE.sub(r"\1***", text)
    text = _USERINFO_RE.sub(r"\1***@", text)
    return _ENCODED_USERINFO_RE.sub(r"\1***%40", text)


def strip_secrets(url: str, token: str | None = None) -> str:
    """``url`` as manifests and logs keep it: secret query parameters and ``user:password@`` dropped.

    The query is filtered as written (not decoded and re-encoded), so the rest
    of the URL stays as the user gave it; what is left goes through ``redact``.
    """
    parts = urlsplit(url)
    kept = [
        p for p in parts.query.split("&") if p and not _SECRET_NAME_RE.fullmatch(unquote(p.split("=")[0]))
    ]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return redact(urlunsplit((parts.scheme, netloc, parts.path, "&".join(kept), parts.fragment)), token)


def _origin(url: str) -> tuple[str, str]:
    """``(scheme, host[:port])`` of a URL, the default port left out."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    if default and host.endswith(default):
        host = host[: -len(default)]
    return scheme, host


def _quadkey(x: int, y: int, z: int) -> str:
    """Bing's quadkey of tile ``(x, y, z)`` (``{q}``)."""
    import mercantile

    return mercantile.quadkey(x, y, z)


@dataclass
class TileTemplate:
    """A validated XYZ template and how to fill it."""

    template: str
    subdomains: tuple[str, ...] = ("a", "b", "c")
    tms: bool = False  # TileJSON scheme "tms": rows counted from the south
    token: str | None = None
    token_env: str = DEFAULT_TOKEN_ENV
    withheld_from: str | None = None  # the host a TileJSON document named, not sent the token

    def url(self, x: int, y: int, z: int) -> str:
        """The URL of tile ``(x, y, z)``; the token percent-encoded (a ``#`` or ``&`` in it stays in it)."""
        token = quote(self.token, safe="") if self.token else ""
        values = {
            "z": str(z),
            "x": str(x),
            "y": str((1 << z) - 1 - y if self.tms else y),
            "-y": str((1 << z) - 1 - y),
            "q": _quadkey(x, y, z),
            "s": self.subdomains[(x + y) % len(self.subdomains)] if self.subdomains else "",
            "token": token,
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
                        f"{parts.query}{sep}access_token={token}",
                        parts.fragment,
                    )
                )
        return url

    @property
    def public(self) -> str:
        """The template as it may be shown and stored: no token."""
        return strip_secrets(self.template, self.token)


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
    token_any_host: bool = False,
) -> TileTemplate:
    """Validate ``url`` and read the token; fetch the TileJSON document when ``url`` is one.

    The token from the environment goes only to the host of ``url``: when the
    TileJSON document puts its tiles on another host (or from https on http),
    they are asked for without it, unless ``token_any_host``.
    """
    import requests

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
        tms = doc.get("scheme") == "tms"
        (scheme, host), (tscheme, thost) = _origin(url), _origin(template)
        if token and not token_any_host and (thost != host or (scheme == "https" and tscheme != "https")):
            shown = redact(thost)
            if "{token}" in template:
                raise TokenError(
                    f"the TileJSON document {probe.public} puts its tiles on {tscheme}://{shown}, not on "
                    f"{scheme}://{redact(host)}: the token in {token_env} is sent only to the host you gave "
                    "(allow the other host with --token-any-host)"
                )
            return TileTemplate(template, subs, tms, None, token_env, withheld_from=f"{tscheme}://{shown}")
        return TileTemplate(template, subs, tms, token, token_env)


def token_message(status: int, token_env: str, token: str | None, withheld_from: str | None = None) -> str:
    """What to tell a user whose tiles answered HTTP 401/403."""
    if withheld_from:
        return (
            f"the imagery service at {withheld_from} answered HTTP {status}: it may need the access token, "
            f"but the token in {token_env} is sent only to the host you gave, and the TileJSON document "
            f"put the tiles on {withheld_from} (allow it with --token-any-host)"
        )
    if token:
        return (
            f"the imagery service refused the access token (HTTP {status}): check the token in the "
            f"environment variable {token_env} (is it valid and allowed for this service?)"
        )
    return (
        f"the imagery service needs an access token (HTTP {status}): set the environment variable {token_env}"
    )
