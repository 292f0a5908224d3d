"""`multiactive certs init | issue SITE | show`: the cluster CA and the sites' certificates.

With `--topology`, files go where its `[tls]` says (the first `ca`, its key beside it as
`.key`, and `cert`/`key` with `{site}` filled in); without, under `--dir`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from multiactive.errors import ConfigError
from multiactive.model.tls import DEFAULT_CERT, DEFAULT_KEY, TlsSettings
from multiactive.model.topology import Topology, load_topology
from multiactive.security.certs import (
    DEFAULT_CA_DAYS,
    DEFAULT_SITE_DAYS,
    CertInfo,
    describe,
    issue,
    make_ca,
    write_public,
    write_secret,
)
from multiactive.security.files import read_file


@dataclass(frozen=True, slots=True)
class _Layout:
    ca_cert: Path
    ca_key: Path
    settings: TlsSettings
    topology: Topology | None

    def cert(self, name: str) -> Path:
        return self.settings.cert_path(name)

    def key(self, name: str) -> Path:
        return self.settings.key_path(name)


def _layout(topology_path: Path | None, directory: Path) -> _Layout:
    if topology_path is None:
        settings = TlsSettings(
            (directory / "ca.crt",),
            str(directory / DEFAULT_CERT.removeprefix("certs/")),
            str(directory / DEFAULT_KEY.removeprefix("certs/")),
        )
        return _Layout(directory / "ca.crt", directory / "ca.key", settings, None)
    topology = load_topology(topology_path)
    if topology.tls is None:
        raise ConfigError(f"{topology.source} has no [tls] section to say where certificates go")
    ca = topology.tls.ca[0]
    return _Layout(ca, ca.with_suffix(".key"), topology.tls, topology)


_topology_option = click.option(
    "--topology",
    "topology_path",
    type=click.Path(path_type=Path),
    default=None,
    envvar="MULTIACTIVE_TOPOLOGY",
    help="Put files where this topology's [tls] says (or set MULTIACTIVE_TOPOLOGY).",
)
_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("certs"),
    help="Folder for the files when no --topology is given.",
)


@click.group()
def certs() -> None:
    """Make and show the cluster CA and the sites' certificates."""


@certs.command("init")
@_topology_option
@_dir_option
@click.option("--cluster", default=None, help="Cluster name in the CA's subject.")
@click.option("--days", default=DEFAULT_CA_DAYS, help="Validity of the CA.")
@click.option("--force", is_flag=True, help="Replace an existing CA (every site needs new certs).")
def init(
    topology_path: Path | None, directory: Path, cluster: str | None, days: int, force: bool
) -> None:
    """Make the cluster CA: a key (keep it offline) and a certificate (give it to every site)."""
    layout = _layout(topology_path, directory)
    if layout.ca_cert.exists() and not force:
        raise click.ClickException(f"{layout.ca_cert} exists; --force replaces it")
    name = cluster or (layout.topology.name if layout.topology else "multiactive")
    key, cert = make_ca(name, days)
    write_secret(layout.ca_key, key)
    write_public(layout.ca_cert, cert)
    click.echo(f"CA {name}: certificate {layout.ca_cert}, key {layout.ca_key}")


@certs.command("issue")
@click.argument("name")
@_topology_option
@_dir_option
@click.option("--days", default=DEFAULT_SITE_DAYS, help="Validity of the certificate.")
@click.option(
    "--client", is_flag=True, help="NAME is a publisher or an operator, not a site of the topology."
)
def issue_command(
    name: str, topology_path: Path | None, directory: Path, days: int, client: bool
) -> None:
    """Issue a key and a certificate whose SAN is NAME (a site, or with --client, a client)."""
    layout = _layout(topology_path, directory)
    if layout.topology is not None and not client:
        layout.topology.site(name)  # UnknownSiteError naming the sites
    ca_key = read_file(layout.ca_key, "the CA key (multiactive certs init)")
    ca_cert = read_file(layout.ca_cert, "the CA certificate (multiactive certs init)")
    key, cert = issue(ca_key, ca_cert, name, days)
    write_secret(layout.key(name), key)
    write_public(layout.cert(name), cert)
    click.echo(f"{name}: certificate {layout.cert(name)}, key {layout.key(name)}")


@certs.command("show")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@_topology_option
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per certificate.")
def show(
    files: tuple[Path, ...], topology_path: Path | None, directory: Path, as_json: bool
) -> None:
    """Subject, SANs and expiry of FILES, or of the CA and every site's certificate."""
    layout = _layout(topology_path, directory)
    paths = list(files) or _known_files(layout)
    rows: list[tuple[Path, CertInfo]] = []
    for path in paths:
        rows += [(path, row) for row in describe(read_file(path, "certificate file"))]
    if as_json:
        click.echo(json.dumps([{"file": str(p), **row.to_json()} for p, row in rows], indent=2))
        return
    for path, row in rows:
        days = row.expires_in_s / 86400
        state = "EXPIRED" if days < 0 else f"{days:.0f} days left"
        sans = ", ".join(row.sans) or "-"
        ca = "  [CA]" if row.is_ca else ""
        click.echo(f"{path}\n  subject {row.subject}\n  SANs    {sans}")
        click.echo(f"  expires {row.not_after} ({state}){ca}")


def _known_files(layout: _Layout) -> list[Path]:
    found = [p for p in layout.settings.ca if p.exists()]
    if layout.topology is not None:
        found += [layout.cert(s) for s in layout.topology.site_names if layout.cert(s).exists()]
    else:
        found += sorted(p for p in layout.ca_cert.parent.glob("*.crt") if p != layout.ca_cert)
    return found
