"""Field validators for the fleet inventory: pure functions, no I/O, no models.

Every value checked here ends up on a command line on a managed server (a data directory,
a cluster name, a host to ssh to, a user to log in as) or in a DNS record. The command
builders quote everything anyway; these validators are the second fence, so that a
hostile or mistyped value is refused with a clear message when a DBA types it instead
of surfacing as a strange failure halfway through a failover.

Allow-lists, not deny-lists: each validator says which characters are allowed, and the
error names the first offending character so the DBA sees what to fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re

from django.core.exceptions import ValidationError

PORT_MIN = 1
PORT_MAX = 65535
# PostgreSQL 10 switched to one-number major versions; 9.x is long out of support.
PG_VERSION_MIN = 10
PG_VERSION_MAX = 99
# NAMEDATALEN - 1: the longest identifier PostgreSQL keeps, and a sane cap for a
# Debian cluster name that also becomes part of paths and systemd unit names.
IDENTIFIER_MAX = 63
PATH_MAX = 4096
HOSTNAME_MAX = 253

_IDENTIFIER_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_IDENTIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SLUG_RE = re.compile(r"[a-z][a-z0-9_-]*\Z")
_SLUG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
# Debian's adduser NAME_REGEX, without the trailing `$` it allows for Samba machine
# accounts: a `$` would be expanded by any shell the name reaches.
_UNIX_USER_RE = re.compile(r"[a-z_][a-z0-9_-]*\Z")
UNIX_USER_MAX = 32
_PATH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/_.+,:@=-")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_LSN_RE = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}\Z")
_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}\Z")
HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


def _describe(char: str) -> str:
    """A character as a DBA can recognise it in an error message (spaces, newlines...)."""
    names = {" ": "a space", "\n": "a newline", "\r": "a carriage return", "\t": "a tab"}
    if char in names:
        return names[char]
    if not char.isprintable():
        return f"the control character U+{ord(char):04X}"
    return f"“{char}”"


def _first_bad_char(value: str, allowed: frozenset[str]) -> str | None:
    for char in value:
        if char not in allowed:
            return char
    return None


def validate_port(value: int) -> None:
    """A TCP port: 1–65535."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("A port must be a whole number.", code="invalid_port")
    if not PORT_MIN <= value <= PORT_MAX:
        raise ValidationError(
            "Port %(value)s is out of range: use 1–65535.",
            code="invalid_port",
            params={"value": value},
        )


def validate_pg_version(value: int) -> None:
    """A PostgreSQL major version as Debian names its folders: 15, 16, 17..."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("A PostgreSQL version must be a whole number.", code="invalid")
    if not PG_VERSION_MIN <= value <= PG_VERSION_MAX:
        raise ValidationError(
            "PostgreSQL major version %(value)s is not supported: use %(min)s–%(max)s "
            "(the major version only, e.g. 15).",
            code="invalid_pg_version",
            params={"value": value, "min": PG_VERSION_MIN, "max": PG_VERSION_MAX},
        )


def validate_identifier(value: str) -> None:
    """A herd or Debian cluster name: a letter, then letters, digits, `_` or `-`; ≤ 63."""
    if not value:
        raise ValidationError("A name cannot be empty.", code="invalid_identifier")
    if len(value) > IDENTIFIER_MAX:
        raise ValidationError(
            "“%(value)s…” is %(length)s characters long; the limit is 63.",
            code="invalid_identifier",
            params={"value": value[:20], "length": len(value)},
        )
    bad = _first_bad_char(value, _IDENTIFIER_CHARS)
    if bad is not None:
        raise ValidationError(
            "A name may contain only letters, digits, “_” and “-”; this one contains %(char)s.",
            code="invalid_identifier",
            params={"char": _describe(bad)},
        )
    if not _IDENTIFIER_RE.match(value):
        raise ValidationError("A name must start with a letter.", code="invalid_identifier")


def validate_slug_name(value: str) -> None:
    """An environment name: lower-case, so “Prod” and “prod” cannot both exist."""
    if not value:
        raise ValidationError("A name cannot be empty.", code="invalid_slug")
    if len(value) > IDENTIFIER_MAX:
        raise ValidationError("A name is limited to 63 characters.", code="invalid_slug")
    bad = _first_bad_char(value, _SLUG_CHARS)
    if bad is not None:
        raise ValidationError(
            "Use lower-case letters, digits, “_” and “-” only (e.g. “prod”, “dr-site”); "
            "this name contains %(char)s.",
            code="invalid_slug",
            params={"char": _describe(bad)},
        )
    if not _SLUG_RE.match(value):
        raise ValidationError("A name must start with a letter.", code="invalid_slug")


def validate_unix_user(value: str) -> None:
    """A Unix account name as Debian's adduser accepts it: `postgres`, `pg_admin`..."""
    if not value or len(value) > UNIX_USER_MAX or not _UNIX_USER_RE.match(value):
        raise ValidationError(
            "“%(value)s” is not a valid Unix user name: use lower-case letters, digits, "
            "“_” and “-”, starting with a letter or “_”, at most 32 characters.",
            code="invalid_unix_user",
            params={"value": value[:40]},
        )


def validate_absolute_path(value: str) -> None:
    """An absolute path safe to hand to a remote command: no shell metacharacters, no `..`."""
    if not value.startswith("/"):
        raise ValidationError(
            "“%(value)s” is not an absolute path: it must start with “/”.",
            code="invalid_path",
            params={"value": value[:80]},
        )
    if len(value) > PATH_MAX:
        raise ValidationError("A path is limited to 4096 characters.", code="invalid_path")
    bad = _first_bad_char(value, _PATH_CHARS)
    if bad is not None:
        raise ValidationError(
            "A path may contain only letters, digits and / _ . + , : @ = -; "
            "this one contains %(char)s.",
            code="invalid_path",
            params={"char": _describe(bad)},
        )
    parts = value.split("/")
    if ".." in parts:
        raise ValidationError(
            "A path may not contain “..”: write the directory it leads to instead.",
            code="invalid_path",
        )
    # An empty component in the middle (`/var//lib`) is harmless to the kernel but means
    # the same directory can be spelt two ways, which defeats the uniqueness checks on
    # data directories; a trailing slash is allowed and dropped by normalise_path().
    if "" in parts[1:-1]:
        raise ValidationError("A path may not contain “//”.", code="invalid_path")
    if any(part.startswith("-") for part in parts):
        # A component starting with "-" can be read as an option by the tool receiving it.
        raise ValidationError("A path component may not start with “-”.", code="invalid_path")


def normalise_path(value: str) -> str:
    """Drop trailing slashes (but keep “/” itself) so one directory has one spelling."""
    stripped = value.rstrip("/")
    return stripped or "/"


def join_path(root: str, *parts: str) -> str:
    """`root/part/part`, without doubled slashes whether or not root ends in one."""
    return "/".join([normalise_path(root).rstrip("/"), *parts])


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_dns_name(value: str, what: str) -> None:
    name = value[:-1] if value.endswith(".") else value
    if not name:
        raise ValidationError("%(what)s cannot be empty.", code="invalid", params={"what": what})
    if len(name) > HOSTNAME_MAX:
        raise ValidationError(
            "%(what)s is limited to 253 characters.", code="invalid", params={"what": what}
        )
    for label in name.split("."):
        if not _LABEL_RE.match(label):
            bad = _first_bad_char(label, _IDENTIFIER_CHARS - {"_"})
            reason = (
                f"contains {_describe(bad)}"
                if bad is not None
                else "has an empty label, a label over 63 characters, or one that starts "
                "or ends with “-”"
            )
            raise ValidationError(
                "“%(value)s” is not a valid %(what)s: it %(reason)s.",
                code="invalid",
                params={"value": value[:80], "what": what.lower(), "reason": reason},
            )
    # An all-numeric last label makes "10.0.0.300" look like a name; refuse it so that a
    # mistyped IP address is reported as one instead of being resolved through DNS.
    if name.rsplit(".", 1)[-1].isdigit():
        raise ValidationError(
            "“%(value)s” is not a valid IP address, nor a host name (the last label of a "
            "name cannot be all digits).",
            code="invalid",
            params={"value": value[:80]},
        )


def validate_hostname(value: str) -> None:
    """A host to ssh to: an RFC 1123 host name, or an IPv4 or IPv6 address."""
    if _is_ip_address(value):
        return
    if value.endswith("."):
        raise ValidationError(
            "Write the host name without the trailing dot.", code="invalid_hostname"
        )
    _check_dns_name(value, "Host name")


def normalise_hostname(value: str) -> str:
    """Host names are case-insensitive and IPv6 has many spellings: keep one of each."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value.lower()


def validate_dns_name(value: str) -> None:
    """A DNS name applications connect to (a vhost): a name, not an IP address."""
    if _is_ip_address(value):
        raise ValidationError(
            "“%(value)s” is an IP address; a vhost is a DNS name that ElepHaaS can point "
            "at the current primary.",
            code="invalid_dns_name",
            params={"value": value},
        )
    _check_dns_name(value, "DNS name")


def validate_lsn(value: str) -> None:
    """A pg_lsn as PostgreSQL prints it: `16/B374D848`."""
    if not _LSN_RE.match(value):
        raise ValidationError(
            "“%(value)s” is not a WAL location: expected two hex numbers like 16/B374D848.",
            code="invalid_lsn",
            params={"value": value[:40]},
        )


def validate_host_key_type(value: str) -> None:
    if value not in HOST_KEY_TYPES:
        raise ValidationError(
            "“%(value)s” is not a host key type ElepHaaS accepts (%(types)s).",
            code="invalid_host_key_type",
            params={"value": value[:40], "types": ", ".join(HOST_KEY_TYPES)},
        )


def decode_host_key(value: str) -> bytes:
    try:
        blob = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValidationError(
            "The host key is not valid base64 (copy the second field of the key line).",
            code="invalid_host_key",
        ) from None
    if not blob:
        raise ValidationError("The host key is empty.", code="invalid_host_key")
    return blob


def validate_host_key(value: str) -> None:
    decode_host_key(value)


def validate_host_key_fingerprint(value: str) -> None:
    if not _FINGERPRINT_RE.match(value):
        raise ValidationError(
            "“%(value)s” is not an OpenSSH SHA256 fingerprint (SHA256: followed by 43 "
            "base64 characters, as `ssh-keygen -lf` prints it).",
            code="invalid_fingerprint",
            params={"value": value[:80]},
        )


def sha256_fingerprint(host_key: str) -> str:
    """The fingerprint OpenSSH shows for a base64 key blob (`ssh-keygen -lf` format)."""
    digest = hashlib.sha256(decode_host_key(host_key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def host_key_blob_type(host_key: str) -> str:
    """The key type written inside the blob itself (its first SSH string)."""
    blob = decode_host_key(host_key)
    if len(blob) < 4:
        raise ValidationError("The host key is truncated.", code="invalid_host_key")
    length = int.from_bytes(blob[:4], "big")
    if length > len(blob) - 4:
        raise ValidationError("The host key is truncated.", code="invalid_host_key")
    return blob[4 : 4 + length].decode("ascii", errors="replace")
