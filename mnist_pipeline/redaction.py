"""One redaction for every URL-shaped value this project emits: log records (Prefect's handlers,
its API log table and ours all see them redacted), one-line errors, events, artifacts and
notifications.

What is masked, whatever the URL's scheme: the user info (`s3://KEY:SECRET@bucket`), every query
value (Apprise passes tokens as `?-token=...` and `+X-Auth=...`) and the fragment. The host and
path of an Apprise service URL (`slack://T/B/TOKEN`, `tgram://BOT:TOKEN/CHAT`) are credentials, so
every scheme not known to name a place loses them; on http(s), the path of a known webhook host
(Slack, Discord, Telegram, Teams, ...) and whatever follows a `hooks`/`webhooks` segment.
The same holds where a path's normalisation collapsed the `//` (`https:/u:p@host/x`,
`/cwd/s3:/KEY:SECRET@bucket`), and user info after any scheme-like word (`s3:KEY:SECRET@bucket`);
a `%40` ends user info as '@' does (`s3://KEY:SECRET%40bucket`: no host holds a '%40').
Kept: the parameters of an S3 presigned link (a report link is this project's own capability,
meant to be opened), and the host and path of ordinary places (`s3://bucket/prefix`,
`http://host:9000`, `tcp://scheduler:8786`).
"""

from __future__ import annotations

import logging
import re
import traceback

MASK = "***"

# Schemes whose host and path name a place, not a credential (a `+driver` suffix is allowed).
_PLACE_SCHEMES = {"http", "https", "s3", "file", "tcp", "tls", "ucx", "inproc", "ws", "wss", "ftp", "ftps",
                  "sftp", "json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos", "postgresql",
                  "postgres", "sqlite", "redis", "rediss"}
# Hosts whose URL path is the token (webhooks): the whole path is masked.
_TOKEN_PATH_HOSTS = ("hooks.slack.com", "discord.com", "discordapp.com", "api.telegram.org", "webhook.office.com",
                     "outlook.office.com", "hooks.zapier.com", "maker.ifttt.com", "chat.googleapis.com",
                     "api.pushover.net", "ntfy.sh")
# On any host, path segments after one of these are a webhook's id and token.
_HOOK_SEGMENTS = {"hooks", "hook", "webhook", "webhooks", "webhookb2"}
_BOT_TOKEN = re.compile(r"bot\d+:[\w-]+", re.IGNORECASE)  # Telegram's /bot<id>:<token>/
_PRESIGNED = re.compile(r"X-Amz-(Algorithm|Credential|Date|Expires|SignedHeaders|Signature|Security-Token)",
                        re.IGNORECASE)
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]{0,30}://"
# A URL ends at white space, a quote, or where a comma starts the next one (MNIST_NOTIFY_URL's list).
_URL = re.compile(rf"\b{_SCHEME}[^\s'\"<>`]+?(?=$|[\s'\"<>`]|,{_SCHEME})")
# A place's URL whose `//` a path's normalisation collapsed to `/` (`Path("https://h/x")`).
_COLLAPSED = re.compile(rf"(?<![A-Za-z0-9+.-])(?:{'|'.join(sorted(_PLACE_SCHEMES))})(?:\+[\w.-]+)?:/(?!/)"
                        rf"[^\s'\"<>`]+?(?=$|[\s'\"<>`]|,{_SCHEME})", re.IGNORECASE)
# User info after any scheme-like word (two or more characters: not a drive letter) and any
# slashes; with no slash it must hold a password (`mailto:me@x.org` is an address, not a secret).
_LOOSE_USERINFO = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]{1,30}:)(/*)([^\s/'\"<>`@]+)@")
_PLACE_AUTHORITY = re.compile(r"\[[0-9A-Fa-f:.]*\](:\d*)?|[^:@]*(:\d*)?")  # host[:port]
_TRAILING = ".,;:!?)]}"


def redact_url(url: str) -> str:
    """`url` with its credentials masked (module docstring); anything else is returned as is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, hash_mark, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    head = rest.partition("/")[0]
    if "@" in head:
        at = rest.rindex("@", 0, len(head))
    elif "@" in rest and not _PLACE_AUTHORITY.fullmatch(head):
        at = rest.rindex("@")  # `KEY:SEC/RET@bucket`: an unencoded '/' in a password
    elif "%40" in head.lower():
        at = head.lower().rindex("%40") + 2  # the user info ends where the '@' was encoded
    else:
        at = -1
    userinfo, (authority, slash, path) = MASK + "@" if at >= 0 else "", rest[at + 1:].partition("/")
    host = authority.split(":")[0].lower()
    if scheme.lower().split("+")[0] not in _PLACE_SCHEMES:
        userinfo, authority, slash, path = "", MASK, "", ""
    elif host and any(host == h or host.endswith("." + h) for h in _TOKEN_PATH_HOSTS):
        path = MASK if path else ""
    else:
        path = _redact_path(path)
    if query:
        query = "&".join(_redact_parameter(p) for p in query.split("&"))
    return (f"{scheme}://{userinfo}{authority}{slash}{path}{question}{query}"
            f"{hash_mark}{MASK if fragment else ''}")


def _redact_path(path: str) -> str:
    if "://" in path:  # a URL inside the path (an archive's, a proxy's)
        path = redact(path)
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if segment.lower() in _HOOK_SEGMENTS and i + 1 < len(segments):
            return "/".join(segments[:i + 1] + [MASK])
        if _BOT_TOKEN.fullmatch(segment):
            segments[i] = MASK
    return "/".join(segments)


def _redact_parameter(parameter: str) -> str:
    name, equals, value = parameter.partition("=")
    if not equals:
        return MASK if name else name
    return parameter if _PRESIGNED.fullmatch(name) else f"{name}={MASK if value else ''}"


def redact(text: str) -> str:
    """`text` with every URL in it redacted (redact_url), collapsed ones too, and any user info
    after a scheme-like word masked; the rest unchanged."""
    if ":/" not in text and "@" not in text:
        return text
    text = _URL.sub(_one_url, text)
    text = _COLLAPSED.sub(_one_collapsed, text)
    return _LOOSE_USERINFO.sub(_loose_userinfo, text)


def _one_url(match: re.Match) -> str:
    return _redact_but_trailing(match.group(0))


def _one_collapsed(match: re.Match) -> str:
    scheme, _, rest = match.group(0).partition(":/")
    return scheme + ":/" + _redact_but_trailing(f"{scheme}://{rest}")[len(scheme) + 3:]


def _redact_but_trailing(url: str) -> str:
    core = url.rstrip(_TRAILING)  # a sentence's punctuation after the URL
    return redact_url(core) + url[len(core):]


def _loose_userinfo(match: re.Match) -> str:
    scheme, slashes, userinfo = match.groups()
    if not slashes and ":" not in userinfo:
        return match.group(0)
    return f"{scheme}{slashes}{MASK}@"


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """A log record whose message (its arguments merged in) and traceback are redacted."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it itself, later
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if "://" in text:
            record.exc_text = redact(text)
    return record


def install_log_redaction() -> None:
    """Every log record this process creates, from any logger, is redacted as it is made: before
    any filter or handler (Prefect's console and API handlers, the CLI's warning lines) sees it."""
    current = logging.getLogRecordFactory()
    if getattr(current, "redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        return redact_record(current(*args, **kwargs))

    factory.redacts = True
    logging.setLogRecordFactory(factory)
