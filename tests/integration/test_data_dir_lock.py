"""One process per data dir: a second `site run` on a locked data dir is refused with the
holder's pid, and the first site keeps running untouched."""

from __future__ import annotations

import subprocess

from .conftest import ClusterFactory, publish


def test_second_site_run_on_locked_data_dir_exits_naming_the_holder(
    make_cluster: ClusterFactory,
) -> None:
    """The second process exits non-zero naming the first's pid; the first still serves."""
    cluster = make_cluster(sites=("a", "b"))
    cluster.start()
    first = cluster.processes["a"]
    assert first.process is not None
    holder = first.process.pid
    publish(cluster.client_address("a"), 50, lambda i: f"before{i}")

    second = subprocess.run(
        [*first.command], env=first.env, capture_output=True, timeout=60, check=False
    )
    stderr = second.stderr.decode()
    assert second.returncode != 0, stderr
    assert f"process {holder}" in stderr, stderr
    assert "site.lock" in stderr, stderr
    assert "Traceback" not in stderr, stderr

    assert first.alive, first.log_tail()
    publish(cluster.client_address("a"), 50, lambda i: f"after{i}")
    cluster.wait_converged(30)
    assert sum(s.head for s in cluster.status("b").streams if s.origin == "a") == 100
    assert "IntegrityError" not in first.log_path.read_text()
