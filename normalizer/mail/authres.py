"""Sender authentication from the receiving server's ``Authentication-Results`` (RFC 8601).

The hub does not verify DKIM or SPF itself: the city's border mail server does, and records the
outcome in an ``Authentication-Results`` header under its own authserv-id (``mx.city.example;
dkim=pass header.d=qq.com; spf=pass smtp.mailfrom=qq.com; dmarc=pass header.from=qq.com``).
Only headers carrying the configured authserv-id are read: anyone can write such a header into
a mail, and a border server that follows the RFC removes copies bearing its own id on the way
in, so the others are noise.

Verdicts:

* ``pass``: DMARC passed, or (no DMARC result) DKIM passed for the From domain or SPF passed
  for it (the same organisational alignment DMARC asks for, relaxed: a subdomain counts);
* ``fail``: DMARC failed, or no aligned pass while DKIM or SPF report a failure;
* ``none``: the trusted server recorded nothing usable, or no header of it is present (the
  mail did not come in through it, or came from a domain without DKIM, SPF or DMARC).

A mail with several From headers, or several addresses in From, is ``fail`` whatever the
results say (RFC 5322 allows one; DMARC cannot tell which one a reader would believe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.utils import getaddresses

_COMMENT = re.compile(r"\([^()]*\)")
_FAILS = {"fail", "softfail", "permerror"}


@dataclass
class AuthResult:
    """One ``method=result`` of an Authentication-Results header, with its properties."""

    method: str
    result: str
    props: dict[str, str] = field(default_factory=dict)


@dataclass
class SenderCheck:
    """What the trusted server says about the From address."""

    verdict: str  # pass, fail, none
    detail: str
    results: list[AuthResult] = field(default_factory=list)


def parse(value: str) -> tuple[str, list[AuthResult]]:
    """``(authserv-id, results)`` of one header value (comments dropped, lower-cased keys)."""
    text = value.replace("\r", " ").replace("\n", " ")
    for _ in range(3):  # comments may nest a little
        text = _COMMENT.sub(" ", text)
    parts = [p.strip() for p in text.split(";")]
    head = parts[0].split() if parts else []
    authserv = head[0].lower() if head else ""
    results: list[AuthResult] = []
    for part in parts[1:]:
        tokens = part.split()
        if not tokens or "=" not in tokens[0]:
            continue  # "none", or a malformed entry
        method, _, result = tokens[0].partition("=")
        props = {}
        for tok in tokens[1:]:
            key, eq, val = tok.partition("=")
            if eq and "." in key:
                props[key.lower()] = val.strip('"').lower()
        results.append(AuthResult(method.lower(), result.lower(), props))
    return authserv, results


def _aligned(domain: str | None, from_domain: str) -> bool:
    if not domain:
        return False
    domain = domain.rsplit("@", 1)[-1].lower().rstrip(".")
    return domain == from_domain or domain.endswith("." + from_domain) \
        or from_domain.endswith("." + domain)


def check_sender(headers: list[tuple[str, str]], authserv_id: str,
                 from_email: str | None) -> SenderCheck:
    """The verdict of the server named ``authserv_id`` on this mail's From address.

    Args:
        headers: the mail's raw headers, in order.
        authserv_id: the trusted server's authserv-id (compared case-insensitively).
        from_email: the From address as parsed.
    """
    froms = [v for k, v in headers if k.lower() == "from"]
    if len(froms) > 1:
        return SenderCheck("fail", f"{len(froms)} From headers")
    if froms and len([a for _, a in getaddresses([froms[0]]) if a]) > 1:
        return SenderCheck("fail", "several addresses in From")
    trusted = authserv_id.lower()
    results: list[AuthResult] = []
    for k, v in headers:
        if k.lower() == "authentication-results":
            server, found = parse(v)
            if server == trusted:
                results.extend(found)
    if not results:
        return SenderCheck("none", f"no Authentication-Results from {authserv_id}")
    from_domain = (from_email or "").rsplit("@", 1)[-1].lower()
    summary = "; ".join(f"{r.method}={r.result}" for r in results)
    dmarc = [r for r in results if r.method == "dmarc"]
    if dmarc:
        if any(r.result == "pass" for r in dmarc):
            return SenderCheck("pass", summary, results)
        if any(r.result == "fail" for r in dmarc):
            return SenderCheck("fail", summary, results)
    if from_domain:
        for r in results:
            if r.result != "pass":
                continue
            if r.method == "dkim" and _aligned(r.props.get("header.d")
                                               or r.props.get("header.i"), from_domain):
                return SenderCheck("pass", summary, results)
            if r.method == "spf" and _aligned(r.props.get("smtp.mailfrom")
                                              or r.props.get("smtp.helo"), from_domain):
                return SenderCheck("pass", summary, results)
    if any(r.method in ("dkim", "spf", "dmarc") and r.result in _FAILS for r in results):
        return SenderCheck("fail", summary, results)
    return SenderCheck("none", summary, results)
