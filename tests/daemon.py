"""Running the real daemon (`twistd -n drbd-proxy`) in tests, and talking to it with drbd-proxy-ctl."""

from __future__ import annotations

from pathlib import Path

from helpers import tool

from drbdproxy.daemon import DaemonFailed, ProxyDaemon


class Daemon(ProxyDaemon):
    """A drbd-proxy daemon of a test, ready when constructed; ``log`` is every line it wrote."""

    def __init__(self, workdir: Path, name: str = "proxy", *extra: str,
                 prefix: tuple[str, ...] = ()) -> None:
        super().__init__(workdir, name, *extra, prefix=prefix, bindir=Path(tool("twistd")).parent)
        self.log = self.lines
        try:
            self.wait_ready()
        except DaemonFailed as e:
            raise AssertionError(str(e)) from None


def assert_clean_disconnect(*sims) -> None:
    """Each drbd-sim ended in a lost connection, never in a verification error."""
    for sim in sims:
        rc, report = sim.report()
        assert rc == 1 and report["verified"] is False
        assert "connection lost" in report["error"] or "PingAck" in report["error"], report["error"]
        assert "differs" not in report["error"] and "sequence" not in report["error"]


def wait_until(predicate, what: str, timeout: float = 60) -> None:
    """Poll ``predicate`` (an event we cannot be notified of) until true; fail after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ProxyPair:
    """Two daemons, alice and bob, linked for one DRBD connection on loopback.

    alice's DRBD (a drbd-sim) listens on ``alice_drbd`` and connects to alice's inside address;
    bob's likewise. Connection names follow drbdadm: r0-bob-alice at alice, r0-alice-bob at bob.
    """

    def __init__(self, workdir: Path, *setup: str, host: str = "127.0.0.1",
                 alice_host: str | None = None, bob_host: str | None = None,
                 alice_args: tuple[str, ...] = (), bob_args: tuple[str, ...] = ()) -> None:
        """``host``: the address of both sites; ``alice_host``/``bob_host`` put a site on its own
        address instead (e.g. 127.0.0.1 and 127.0.0.2: each site's inside, outside and DRBD
        addresses are then on its host, as on two machines)."""
        from helpers import free_ports

        self.host = host
        self.alice_host = alice_host or host
        self.bob_host = bob_host or host
        if self.alice_host == self.bob_host:
            (self.alice_drbd, self.alice_in, self.alice_out,
             self.bob_drbd, self.bob_in, self.bob_out) = free_ports(6, self.alice_host)
        else:
            self.alice_drbd, self.alice_in, self.alice_out = free_ports(3, self.alice_host)
            self.bob_drbd, self.bob_in, self.bob_out = free_ports(3, self.bob_host)
        self.alice = Daemon(workdir, "alice", *alice_args)
        self.bob = Daemon(workdir, "bob", *bob_args)
        self.configure(self.alice, *setup)
        self.configure(self.bob, *setup)

    def host_of(self, daemon: Daemon) -> str:
        """The address of ``daemon``'s site (``host`` unless it has its own)."""
        own = self.__dict__.get("alice_host" if daemon is self.alice else "bob_host")
        return own or self.host

    def name(self, daemon: Daemon) -> str:
        return "r0-bob-alice" if daemon is self.alice else "r0-alice-bob"

    def configure(self, daemon: Daemon, *setup: str) -> None:
        # IPv6 without brackets, as drbdadm sends it
        other = self.bob if daemon is self.alice else self.alice
        own, peer = self.host_of(daemon), self.host_of(other)
        if daemon is self.alice:
            ports = (self.alice_in, self.bob_out, self.alice_out, self.alice_drbd)
        else:
            ports = (self.bob_in, self.alice_out, self.bob_out, self.bob_drbd)
        hosts = (own, peer, own, own)
        name = self.name(daemon)
        add = f"add connection {name} " + " ".join(f"{ip}:{p}" for ip, p in zip(hosts, ports))
        args = ["-c", add]
        for command in setup:
            args += ["-c", command.format(name=name)]
        daemon.ctl(*args, check=True)

    def state(self, daemon: Daemon) -> str:
        import json

        out = daemon.ctl("list", "connections", "-j").stdout
        connections = json.loads(out)["connections"] if out else []
        return connections[0]["state"] if connections else ""

    def wait_linked(self) -> None:
        for d in (self.alice, self.bob):
            wait_until(lambda d=d: self.state(d) in ("ProxyConnected", "Connected"),
                       "the proxies to link up")

    def stats(self, daemon: Daemon) -> dict[str, str]:
        out = daemon.ctl("print", "statistics", check=True).stdout
        return dict(line.split(" ", 1) for line in out.splitlines())

    def sim_args(self, *extra: str) -> tuple[list[str], list[str]]:
        """drbd-sim arguments: primary at alice, secondary at bob."""
        a, b = (f"[{h}]" if ":" in h else h for h in map(self.host_of, (self.alice, self.bob)))
        common = ["--connect-timeout", "60", "--ping-timeout", "10", *extra]
        return (
            ["--role", "primary", "--listen", f"{a}:{self.alice_drbd}",
             "--peer", f"{a}:{self.alice_in}", *common],
            ["--role", "secondary", "--listen", f"{b}:{self.bob_drbd}",
             "--peer", f"{b}:{self.bob_in}", *common],
        )

    def replicate(self, sims, *extra: str) -> tuple[dict, dict]:
        """Run a primary at alice and a secondary at bob; both must end verified."""
        primary_args, secondary_args = self.sim_args(*extra)
        secondary = sims(*secondary_args)
        primary = sims(*primary_args)
        (prc, p), (src, s) = primary.report(), secondary.report()
        assert (prc, src) == (0, 0), (p["error"], s["error"])
        assert p["verified"] and s["verified"]
        return p, s

    def stop(self) -> None:
        for d in (self.alice, self.bob):
            d.stop()
