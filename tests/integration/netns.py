"""Test hosts in Linux network namespaces (root only): a link that can be cut.

Two namespaces (``a``, ``b``) and the test's own namespace hang off one bridge (inside a
third, hub namespace) on a private /24 that exists only inside these namespaces. ``cut()``
blackholes a<->b traffic while both still reach the test's namespace (workers, client);
``heal()`` restores it. Everything is removed on ``teardown()``, including on failure.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import dataclass, field

_counter = itertools.count()


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


@dataclass
class Netns:
    tag: str = field(default_factory=lambda: f"{os.getpid() % 1000}{next(_counter)}")
    created: list[str] = field(default_factory=list)

    @property
    def subnet(self) -> str:
        return f"10.231.{int(self.tag) % 250}"

    def name(self, host: str) -> str:
        return f"mz{self.tag}{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{ {'a': 1, 'b': 2, 'root': 9}[host] }"

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.name(host)]

    def setup(self) -> None:
        hub = self.name("h")
        for ns in (hub, self.name("a"), self.name("b")):
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "add", "br0", "type", "bridge", ns=hub)
        _ip("link", "set", "br0", "up", ns=hub)
        for host in ("a", "b", "root"):
            inner, outer = f"mz{self.tag}{host[0]}i", f"mz{self.tag}{host[0]}o"
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", outer, "netns", hub)
            _ip("link", "set", outer, "master", "br0", ns=hub)
            _ip("link", "set", outer, "up", ns=hub)
            target = None if host == "root" else self.name(host)
            if target is not None:
                _ip("link", "set", inner, "netns", target)
            _ip("addr", "add", f"{self.address(host)}/24", "dev", inner, ns=target)
            _ip("link", "set", inner, "up", ns=target)

    def cut(self) -> None:
        _ip("route", "add", "blackhole", f"{self.address('b')}/32", ns=self.name("a"))
        _ip("route", "add", "blackhole", f"{self.address('a')}/32", ns=self.name("b"))

    def heal(self) -> None:
        _ip("route", "del", "blackhole", f"{self.address('b')}/32", ns=self.name("a"))
        _ip("route", "del", "blackhole", f"{self.address('a')}/32", ns=self.name("b"))

    def teardown(self) -> None:
        subprocess.run(["ip", "link", "del", f"mz{self.tag}ri"], capture_output=True, check=False)
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.created.clear()
