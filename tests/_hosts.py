"""Two hosts on this machine: Linux network namespaces ``central`` and ``site``, joined by one veth link.

::

    test process (this machine's own namespace)
        | admin link 10.X.1.0/30: the test's view of central (Airflow UI/API, MLflow) - never of the site
    central 10.X.1.2 / 10.X.0.1
        | site link 10.X.0.0/30: the only way between the two; tcpdump captures it
    site 10.X.0.2

The site's firewall (iptables in its namespace) lets it open TCP connections to central on the ports given
(api-server, MLflow, ...) and refuses everything else, in both directions: central can open no connection to the
site, and the site reaches nothing of central but those ports. Central does not forward, and the site has no route
to the admin link, so the test's own namespace is out of the site's reach too.

Everything is created under names of this instance's own and removed by :meth:`TwoHosts.destroy` (processes in the
namespaces are killed first). Needs root; :func:`require_network_namespaces` says why it cannot run otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace


class NetnsError(RuntimeError):
    """The namespaces, links or firewall could not be set up."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def require_network_namespaces() -> None:
    """Raise NetnsError with the reason when this machine cannot host the two namespaces (not root, no tools)."""
    missing = [tool for tool in ("ip", "iptables", "tcpdump") if shutil.which(tool) is None]
    if missing:
        raise NetnsError(
            f"Checked PATH for {', '.join(missing)}: not found. Install them (make system-deps installs tcpdump; "
            "iproute2 and iptables come with the OS)."
        )
    if os.geteuid() != 0:
        raise NetnsError(
            f"Network namespaces need root (CAP_NET_ADMIN); this process runs as uid {os.geteuid()}. "
            "Run the two-host test as root, as `make test` in CI does."
        )


def site_firewall_rules(dev: str, central_ip: str, egress_ports: Iterable[int]) -> list[list[str]]:
    """iptables rules of a site: new TCP connections out of ``dev`` to ``central_ip`` on ``egress_ports`` only,
    replies to them, loopback; everything else refused in both directions, nothing forwarded."""
    return [
        ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
        ["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-A", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", "INPUT", "-j", "REJECT"],
        ["-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"],
        ["-A", "OUTPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        *(
            ["-A", "OUTPUT", "-o", dev, "-p", "tcp", "-d", central_ip, "--dport", str(port), "-m",
             "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]
            for port in sorted(set(egress_ports))
        ),  # fmt: skip
        ["-A", "OUTPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", "OUTPUT", "-j", "REJECT"],
        ["-P", "FORWARD", "DROP"],
    ]


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/23 that no interface of this machine uses: the site link and the admin link are /30s in it."""
    used = _run("ip", "-4", "-o", "addr", "show").stdout
    for _ in range(50):
        net = ipaddress.ip_network(f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(127) * 2}.0/23")
        if not any(
            ipaddress.ip_interface(word).ip in net for line in used.splitlines() for word in line.split()
            if "/" in word and word[0].isdigit()
        ):
            return net
    raise NetnsError("Found no free 10.x.y.0/23 for the test links after 50 tries; remove stale test interfaces")


def _remove_namespaces(namespaces: Iterable[str], tag: str) -> None:
    """Kill every process left in ``namespaces`` (TERM, then KILL), delete them (and so their links), then the admin
    link's host end ``eh<tag>a``, which goes with its peer's namespace but is deleted explicitly should it linger."""
    for ns in namespaces:
        if _run("ip", "netns", "pids", ns, check=False).returncode != 0:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split()]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while pids and time.monotonic() < deadline:
                pids = [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split()]
                time.sleep(0.2)
        _run("ip", "netns", "del", ns, check=False)
    _run("ip", "link", "del", f"eh{tag}a", check=False)


@dataclass
class TwoHosts:
    """The two namespaces; :meth:`create` builds them, :meth:`destroy` removes every trace."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    central: str = ""
    site: str = ""
    central_ip: str = ""  # central's address on the site link
    site_ip: str = ""
    admin_ip: str = ""  # central's address on the admin link (what the test process dials)
    site_link: str = ""  # central's end of the site link: the interface captures run on
    _captures: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.central = self.central or f"edge-central-{self.tag}"
        self.site = self.site or f"edge-site-{self.tag}"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def create(self, site_egress_ports: Iterable[int]) -> TwoHosts:
        """Create both namespaces, the two links, the routes and the site's firewall.

        :param site_egress_ports: central's TCP ports the site may open connections to; nothing else is allowed.
        """
        require_network_namespaces()
        net = _free_subnet()
        base = int(net.network_address)
        site_net, admin_net = ipaddress.ip_network(f"{net.network_address}/30"), ipaddress.ip_network(
            f"{ipaddress.ip_address(base + 256)}/30"
        )
        self.central_ip, self.site_ip = (str(ip) for ip in site_net.hosts())
        admin_host_ip, self.admin_ip = (str(ip) for ip in admin_net.hosts())
        self.site_link = f"ec{self.tag}s"  # interface names: at most 15 characters
        site_end, admin_host_end, admin_central_end = f"es{self.tag}c", f"eh{self.tag}a", f"ec{self.tag}a"
        try:
            for ns in (self.central, self.site):
                _run("ip", "netns", "add", ns)
                self.exec_in(ns, "ip", "link", "set", "lo", "up")
                self.exec_in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
                # IPv4 only: no IPv6 neighbour chatter or link-local route around the firewall below.
                self.exec_in(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            _run("ip", "link", "add", self.site_link, "netns", self.central, "type", "veth", "peer", "name",
                 site_end, "netns", self.site)  # fmt: skip
            _run("ip", "link", "add", admin_host_end, "type", "veth", "peer", "name", admin_central_end, "netns",
                 self.central)  # fmt: skip
            self.exec_in(self.central, "ip", "addr", "add", f"{self.central_ip}/30", "dev", self.site_link)
            self.exec_in(self.site, "ip", "addr", "add", f"{self.site_ip}/30", "dev", site_end)
            self.exec_in(self.central, "ip", "addr", "add", f"{self.admin_ip}/30", "dev", admin_central_end)
            _run("ip", "addr", "add", f"{admin_host_ip}/30", "dev", admin_host_end)
            for ns, dev in ((self.central, self.site_link), (self.site, site_end), (self.central, admin_central_end)):
                self.exec_in(ns, "ip", "link", "set", dev, "up")
            _run("ip", "link", "set", admin_host_end, "up")
            self._site_firewall(site_end, site_egress_ports)
        except BaseException:
            self.destroy()
            raise
        return self

    def _site_firewall(self, dev: str, egress_ports: Iterable[int]) -> None:
        for rule in site_firewall_rules(dev, self.central_ip, egress_ports):
            self.exec_in(self.site, "iptables", "-w", *rule)

    def destroy(self) -> None:
        """Stop the captures, kill every process left in the namespaces, remove them (and so their links)."""
        for capture in self._captures:
            _stop(capture)
        _remove_namespaces((self.central, self.site), self.tag)

    # -- running things ----------------------------------------------------------------------------------------

    @staticmethod
    def prefix(ns: str) -> list[str]:
        """argv prefix that runs a command inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns]

    def exec_in(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(*self.prefix(ns), *argv, check=check)

    def python_in(self, ns: str, code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
        """Run ``code`` with this interpreter inside ``ns``; return its stdout (raises with stderr on failure)."""
        proc = subprocess.run(
            [*self.prefix(ns), sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        if proc.returncode != 0:
            raise NetnsError(f"python in {ns} exited {proc.returncode}: {proc.stderr.strip()[-3000:]}")
        return proc.stdout

    def connect(self, ns: str, host: str, ports: Sequence[int], timeout: float = 3.0) -> dict[int, str]:
        """Try a TCP connection from ``ns`` to each ``host:port``; return per port "open" or the error's name."""
        code = f"""
import json, socket
out = {{}}
for port in {list(ports)!r}:
    try:
        socket.create_connection(({host!r}, port), timeout={timeout}).close()
        out[port] = "open"
    except OSError as err:
        out[port] = type(err).__name__
print(json.dumps(out))
"""
        import json

        return {int(port): result for port, result in json.loads(self.python_in(ns, code)).items()}

    def capture(self, pcap: Path) -> subprocess.Popen:
        """Start tcpdump on central's end of the site link, writing every packet (full length) to ``pcap``."""
        log = open(pcap.with_suffix(".log"), "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [*self.prefix(self.central), "tcpdump", "-i", self.site_link, "-n", "-s", "0", "-U", "-w", str(pcap)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 15
        while b"listening on" not in pcap.with_suffix(".log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise NetnsError(f"tcpdump did not start: {pcap.with_suffix('.log').read_text(errors='replace')}")
            time.sleep(0.1)
        self._captures.append(proc)
        return proc

    def stop_capture(self, proc: subprocess.Popen) -> None:
        """Stop a capture so its file is complete."""
        _stop(proc)

    def refused_counts(self) -> dict[str, int]:
        """Packets the site's firewall refused so far: ``{"inbound": n, "outbound": n}`` (REJECT rules' counters)."""
        counts = {}
        for chain, name in (("INPUT", "inbound"), ("OUTPUT", "outbound")):
            listing = self.exec_in(self.site, "iptables", "-w", "-L", chain, "-v", "-n", "-x").stdout
            counts[name] = sum(int(line.split()[0]) for line in listing.splitlines() if "REJECT" in line)
        return counts


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Site:
    """One site namespace of :class:`SiteHosts`: its link to central and the addresses on it."""

    name: str
    ns: str
    ip: str  # the site's address on its link
    central_ip: str  # central's address on the site's link (what the site dials)
    link: str  # central's end of the site's link: its capture runs there


@dataclass
class SiteHosts:
    """Central and several sites as network namespaces: each site joined to central by a link of its own, with the
    firewall of :class:`TwoHosts` (the site dials central's allowed ports; nothing dials the site). Sites have no
    route to each other (central does not forward) nor to the test's own namespace (the admin link)."""

    names: Sequence[str]
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    central: str = ""
    admin_ip: str = ""
    sites: dict[str, Site] = field(default_factory=dict)
    _captures: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.central = self.central or f"edge-central-{self.tag}"

    @property
    def central_ip(self) -> str:
        """Central's address on the first site's link (where a server central advertises is reached from there)."""
        return self.sites[self.names[0]].central_ip

    def create(self, site_egress_ports: Iterable[int]) -> SiteHosts:
        require_network_namespaces()
        ports = list(site_egress_ports)
        net = _free_subnet()
        base = int(net.network_address)
        admin_host_ip, self.admin_ip = (str(ip) for ip in ipaddress.ip_network(
            f"{ipaddress.ip_address(base + 256)}/30").hosts())  # fmt: skip
        admin_host_end, admin_central_end = f"eh{self.tag}a", f"ec{self.tag}a"
        try:
            for ns in (self.central, *(f"edge-{n}-{self.tag}" for n in self.names)):
                _run("ip", "netns", "add", ns)
                self.exec_in(ns, "ip", "link", "set", "lo", "up")
                self.exec_in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
                self.exec_in(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            for index, name in enumerate(self.names):
                central_ip, site_ip = (str(ip) for ip in ipaddress.ip_network(
                    f"{ipaddress.ip_address(base + 4 * index)}/30").hosts())  # fmt: skip
                site = Site(name, f"edge-{name}-{self.tag}", site_ip, central_ip, f"ec{self.tag}{index}")
                site_end = f"es{self.tag}{index}"
                _run("ip", "link", "add", site.link, "netns", self.central, "type", "veth", "peer", "name",
                     site_end, "netns", site.ns)  # fmt: skip
                self.exec_in(self.central, "ip", "addr", "add", f"{central_ip}/30", "dev", site.link)
                self.exec_in(site.ns, "ip", "addr", "add", f"{site_ip}/30", "dev", site_end)
                self.exec_in(self.central, "ip", "link", "set", site.link, "up")
                self.exec_in(site.ns, "ip", "link", "set", site_end, "up")
                for rule in site_firewall_rules(site_end, central_ip, ports):
                    self.exec_in(site.ns, "iptables", "-w", *rule)
                self.sites[name] = site
            _run("ip", "link", "add", admin_host_end, "type", "veth", "peer", "name", admin_central_end, "netns",
                 self.central)  # fmt: skip
            self.exec_in(self.central, "ip", "addr", "add", f"{self.admin_ip}/30", "dev", admin_central_end)
            _run("ip", "addr", "add", f"{admin_host_ip}/30", "dev", admin_host_end)
            self.exec_in(self.central, "ip", "link", "set", admin_central_end, "up")
            _run("ip", "link", "set", admin_host_end, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        for capture in self._captures:
            _stop(capture)
        _remove_namespaces((self.central, *(f"edge-{n}-{self.tag}" for n in self.names)), self.tag)

    prefix = staticmethod(TwoHosts.prefix)
    exec_in = TwoHosts.exec_in
    python_in = TwoHosts.python_in
    connect = TwoHosts.connect

    def capture(self, name: str, pcap: Path) -> subprocess.Popen:
        """Start tcpdump on central's end of site ``name``'s link, every packet to ``pcap``."""
        return TwoHosts.capture(SimpleNamespace(prefix=self.prefix, central=self.central,
                                                site_link=self.sites[name].link, _captures=self._captures), pcap)  # fmt: skip

    stop_capture = TwoHosts.stop_capture
