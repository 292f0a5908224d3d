"""The link handshake's checks against the topology: a peer on another cluster, another
partition count or another site list is refused with the difference named; a peer that claims
to be this site points at an address collision."""

from __future__ import annotations

import pytest

from multiactive.errors import ConfigError, ProtocolError, UnknownSiteError
from multiactive.model.topology import Topology, parse_topology
from multiactive.replication.links import check_agreement, link_for_hello
from multiactive.wire.protocol import Hello


def topology(partitions: int = 8, sites: tuple[str, ...] = ("a", "b")) -> Topology:
    raw = {
        "cluster": {"name": "c", "partitions": partitions},
        "sites": [{"name": n, "listen": f"127.0.0.1:{7100 + i}"} for i, n in enumerate(sites)],
    }
    return parse_topology(raw, source="t.toml")


def hello_from(peer: Topology, site: str = "b") -> Hello:
    """The HELLO a site of `peer` sends when it pushes."""
    return Hello(site, "push", peer.name, partitions=peer.partitions,
                 sites=tuple(sorted(peer.site_names)))  # fmt: skip


def test_a_peer_on_the_same_topology_gets_its_link() -> None:
    """Same cluster, partitions and sites: the HELLO names the link b->a."""
    ours = topology()
    assert link_for_hello(ours, "a", hello_from(topology())).name == "b->a"


def test_a_peer_with_other_partitions_is_refused_naming_both_counts() -> None:
    """4 partitions there, 8 here: refused, both figures and the setting named."""
    with pytest.raises(ConfigError, match=r"\[cluster\] partitions = 4 there, 8 here"):
        link_for_hello(topology(), "a", hello_from(topology(partitions=4)))


def test_a_peer_with_other_sites_is_refused_naming_both_lists() -> None:
    """A peer whose file lists a third site is refused; both site lists are named."""
    with pytest.raises(ConfigError, match=r"\[\[sites\]\] a, b, c there, a, b here"):
        check_agreement(topology(), hello_from(topology(sites=("a", "b", "c"))))


def test_a_peer_of_another_cluster_is_refused() -> None:
    """The cluster name must match."""
    hello = Hello("b", "push", "other")
    with pytest.raises(ProtocolError, match="belongs to cluster 'other'"):
        link_for_hello(topology(), "a", hello)


def test_a_peer_that_says_nothing_about_its_topology_is_only_checked_by_name() -> None:
    """A HELLO without partitions and sites (0 and ()) is not compared on them."""
    assert link_for_hello(topology(), "a", Hello("b", "push", "c")).name == "b->a"


def test_a_peer_claiming_to_be_this_site_points_at_an_address_collision() -> None:
    """HELLO from 'a' at 'a': two sites share an address (or a site dials itself)."""
    with pytest.raises(ConfigError, match=r"a peer says it is this site .*multiactive validate"):
        link_for_hello(topology(), "a", hello_from(topology(), site="a"))


def test_an_unknown_site_is_refused_listing_the_known_ones() -> None:
    """A site name the topology does not define is refused with the list."""
    with pytest.raises(UnknownSiteError, match="unknown site 'z'"):
        link_for_hello(topology(), "a", Hello("z", "push", "c"))
