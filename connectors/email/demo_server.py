"""A throwaway Dovecot IMAP server for tests, the demo and the benchmark.

Dovecot (``apt-get install dovecot-imapd``) is started with its own config in a folder of its
own: loopback only, a free port for IMAP (STARTTLS offered) and one for implicit TLS, a
certificate signed by a throwaway CA (``trustme``), Maildir storage, and a static password
database in which any user name logs in with the one password (each test uses its own user,
so mailboxes never mix). Dovecot treats loopback connections as secure, so plain-text login
works only there.

Command line (used by ``samples/demo.sh``)::

    python -m connectors.email.demo_server start --state .demo/mail [--load samples/mail]
    python -m connectors.email.demo_server stop --state .demo/mail

``start`` prints ``export VAR=value`` lines (IMAP_HOST, IMAP_PORT, IMAP_TLS_PORT, IMAP_USER,
IMAP_PASSWORD, IMAP_CA_FILE) for ``eval``.
"""

from __future__ import annotations

import argparse
import atexit
import email.utils
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DEMO_PASSWORD = "demo-imap-pass"

CONFIG = """\
# Throwaway Dovecot written by connectors/email/demo_server.py
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = fbhub-{port}
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{dir}/tls/server.pem
ssl_key = <{dir}/tls/server.key
ssl_min_protocol = TLSv1.2
# loopback counts as secure for Dovecot: plain-text login works there and nowhere else
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:{dir}/mail/%u/Maildir
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
first_valid_gid = {gid}
default_internal_user = {internal_user}
default_login_user = {login_user}
imap_max_line_length = 64k
mail_max_userip_connections = 100
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
  {chroot}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{extra}
"""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"Dovecot did not open port {port}")


@dataclass
class Dovecot:
    """A running throwaway Dovecot (use :meth:`start` / :meth:`stop`, or ``with``)."""

    folder: Path
    port: int = 0
    tls_port: int = 0
    password: str = DEMO_PASSWORD
    hostname: str = "localhost"
    #: Extra config lines, e.g. ``imap_capability = IMAP4rev1 UIDPLUS`` to hide MOVE and IDLE.
    extra: str = ""
    ca_pem: Path = field(init=False)
    mail_uid: int = field(default=-1, init=False)
    mail_gid: int = field(default=-1, init=False)
    pid: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        self.ca_pem = self.folder / "tls" / "ca.pem"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20.0, stop_at_exit: bool = True) -> Dovecot:
        """Write the config, the CA and the server certificate, and start Dovecot.

        Args:
            timeout: seconds to wait for the ports to open.
            stop_at_exit: stop the server when this Python process exits (tests, benchmark);
                the demo CLI passes False so the server outlives ``start``.
        """
        if not Path(DOVECOT).exists():
            raise FileNotFoundError("dovecot is not installed: apt-get install dovecot-imapd")
        self.port = self.port or free_port()
        self.tls_port = self.tls_port or free_port()
        for sub in ("run", "state", "mail", "tls"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._write_tls()
        root = os.geteuid() == 0
        me = pwd.getpwuid(os.geteuid()).pw_name
        if root:
            # mail processes run as the dovecot user: its folder must be reachable for it
            mail_user = pwd.getpwnam("dovecot")
            uid, gid, internal, login = mail_user.pw_uid, mail_user.pw_gid, "dovecot", "dovenull"
            chroot = ""
            self.folder.chmod(0o755)
            os.chown(self.folder / "mail", uid, gid)
        else:
            uid, gid, internal, login = os.geteuid(), os.getegid(), me, me
            chroot = "chroot ="
        self.mail_uid, self.mail_gid = uid, gid
        cfg = self.folder / "dovecot.conf"
        cfg.write_text(CONFIG.format(dir=self.folder, port=self.port, tls_port=self.tls_port,
                                     uid=uid, gid=gid, internal_user=internal, login_user=login,
                                     password=self.password, chroot=chroot, extra=self.extra),
                       encoding="utf-8")
        self.stop()
        # Dovecot forks into the background; its children must not hold our pipes open
        with open(self.folder / "start.log", "wb") as log:
            subprocess.run([DOVECOT, "-c", str(cfg)], check=True, stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        _wait_port(self.port, deadline)
        _wait_port(self.tls_port, deadline)
        self.pid = self._read_pid()
        if stop_at_exit:
            atexit.register(self.stop)
        return self

    def _write_tls(self) -> None:
        tls = self.folder / "tls"
        if (tls / "server.pem").exists() and self.ca_pem.exists():
            return
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert(self.hostname, "127.0.0.1")
        ca.cert_pem.write_to_path(str(self.ca_pem))
        cert.private_key_pem.write_to_path(str(tls / "server.key"))
        with open(tls / "server.pem", "wb") as fh:
            for blob in cert.cert_chain_pems:
                fh.write(blob.bytes())
        (tls / "server.key").chmod(0o600)

    def _read_pid(self) -> int | None:
        pid_file = self.folder / "run" / "master.pid"
        for _ in range(50):
            if pid_file.exists():
                return int(pid_file.read_text().strip())
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        """Stop the server (if it runs; only a Dovecot started with this folder's config)."""
        pid = self.pid or (self._read_pid() if (self.folder / "run" / "master.pid").exists()
                           else None)
        self.pid = None
        if pid is None or not self._is_ours(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)

    def _is_ours(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"dovecot" in cmdline and str(self.folder).encode() in cmdline

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def maildir(self, user: str) -> Path:
        """The Maildir of ``user`` (it exists after the first login)."""
        return self.folder / "mail" / user / "Maildir"

    def client(self, user: str, *, tls: bool = False):
        """A logged-in ``IMAPClient`` (plain on loopback, or implicit TLS)."""
        import ssl

        from imapclient import IMAPClient

        if tls:
            ctx = ssl.create_default_context(cafile=str(self.ca_pem))
            c = IMAPClient("127.0.0.1", port=self.tls_port, ssl=True, ssl_context=ctx,
                           timeout=30)
        else:
            c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        c.login(user, self.password)
        return c

    def append(self, user: str, messages: Iterable[bytes], folder: str = "INBOX",
               flags: tuple[bytes, ...] = ()) -> int:
        """APPEND raw messages (creating the folder); return how many."""
        c = self.client(user)
        try:
            if folder.upper() != "INBOX" and not c.folder_exists(folder):
                c.create_folder(folder)
            n = 0
            for raw in messages:
                # INTERNALDATE = the mail's Date, as if it had arrived when it was sent
                c.append(folder, raw, flags=flags, msg_time=_date_of(raw))
                n += 1
            return n
        finally:
            c.logout()

    def drop_into_maildir(self, user: str, messages: Iterable[bytes]) -> int:
        """Write messages straight into the user's Maildir ``new/`` (much faster than APPEND
        for thousands of mails; Dovecot indexes them on the next SELECT)."""
        maildir = self.maildir(user)
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        owned = [maildir.parent, maildir, *(maildir / s for s in ("cur", "new", "tmp"))]
        stamp, n = int(time.time()), 0
        for n, raw in enumerate(messages, 1):
            # S= and W= (the size with CRLF line ends, RFC822.SIZE) as Dovecot's own delivery
            # names them: without W= Dovecot reads the whole file to answer RFC822.SIZE
            vsize = len(raw) + raw.count(b"\n") - raw.count(b"\r\n")
            path = maildir / "new" / f"{stamp}.M{n}P{os.getpid()}.fbhub,S={len(raw)},W={vsize}"
            path.write_bytes(raw)
            owned.append(path)
        if os.geteuid() == 0:
            for path in owned:
                os.chown(path, self.mail_uid, self.mail_gid)
        return n

    def env(self, user: str) -> dict[str, str]:
        """Environment for a hub config that reads this server."""
        return {"IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(self.port),
                "IMAP_TLS_PORT": str(self.tls_port), "IMAP_USER": user,
                "IMAP_PASSWORD": self.password, "IMAP_CA_FILE": str(self.ca_pem)}


def _date_of(raw: bytes) -> datetime | None:
    m = re.search(rb"^Date:[ \t]*(.+?)\r?$", raw[:65536], re.M | re.I)
    if not m:
        return None
    try:
        return email.utils.parsedate_to_datetime(m.group(1).decode("ascii", "replace"))
    except (TypeError, ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    """``start`` / ``stop`` a demo server (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m connectors.email.demo_server")
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--state", default=".demo/mail", help="Folder for the server's files.")
    p.add_argument("--user", default="complaints@city.example")
    p.add_argument("--load", default=None, help="Folder of .eml files to APPEND to INBOX.")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    state = Path(args.state)
    server = Dovecot(state, port=args.port)
    if args.action == "stop":
        server.stop()
        return 0
    # a fresh mailbox each time: the hub recognises mail it already stored (Message-ID + hash)
    shutil.rmtree(state / "mail", ignore_errors=True)
    server.start(stop_at_exit=False)
    if args.load:
        files = sorted(Path(args.load).glob("*.eml"))
        server.append(args.user, (f.read_bytes() for f in files))
        print(f"# appended {len(files)} mails from {args.load} to {args.user}/INBOX",
              file=sys.stderr)
    for k, v in server.env(args.user).items():
        print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
