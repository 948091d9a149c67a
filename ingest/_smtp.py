"""SMTP for alert emails: the server an ``--smtp-url`` names, and one blocking send."""

from __future__ import annotations

import dataclasses
import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

__all__ = ["SmtpServer", "parse_smtp_url", "send"]

_SMTP_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


@dataclasses.dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    tls: str  # "implicit", "required" or "opportunistic"
    user: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpServer:
    """The SMTP server ``url`` names, or ``ValueError`` (its password left out)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if scheme not in _SMTP_PORTS or not parts.hostname or port == -1:
        raise ValueError(
            "the SMTP URL (not repeated here: it may hold a password) is not "
            "smtp://, smtp+starttls:// or smtps:// [user:password@]host[:port]"
        )
    tls = {"smtps": "implicit", "smtp+starttls": "required"}.get(scheme, "opportunistic")
    return SmtpServer(
        host=parts.hostname,
        port=port or _SMTP_PORTS[scheme],
        tls=tls,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def send(
    server: SmtpServer, tls: ssl.SSLContext, timeout: float, message: EmailMessage
) -> dict[str, tuple[int, bytes]]:
    """Send ``message`` (blocking; run in a thread); return the recipients refused."""
    smtp: smtplib.SMTP
    if server.tls == "implicit":
        smtp = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout, context=tls)
    else:
        smtp = smtplib.SMTP(server.host, server.port, timeout=timeout)
    with smtp:
        smtp.ehlo()
        if server.tls == "required" or (
            server.tls == "opportunistic" and smtp.has_extn("starttls")
        ):
            smtp.starttls(context=tls)
            smtp.ehlo()
        if server.user is not None:
            smtp.login(server.user, server.password or "")
        return smtp.send_message(message)
