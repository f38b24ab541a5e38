"""
The metrics of a member as ``RaftService`` builds it (the disk store from
``txraft.defaults``), scraped from ``GET /metrics``: fsync durations, the
size of the latest snapshot and linearizable reads served.
"""

import json

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor

from tests.test_service import free_port, services, until  # noqa: F401 (fixture)
from txraft.config import RaftConfig
from txraft.http_client import Client
from txraft.kv import KeyValueStore
from txraft.service import RaftService


async def scrape(client):
    code, body = await client._request("GET", client._url() + "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


@pytest_twisted.ensureDeferred
async def test_fsync_time_snapshot_size_and_reads_are_scraped_from_a_disk_member(tmp_path, services):  # noqa: F811
    async def body():
        host = "127.0.0.32"
        config = RaftConfig(listen=f"{host}:{free_port(host)}", insecure=True, heartbeat=0.05,
                            log_dir=str(tmp_path / "log"), snapshot_threshold=20)
        svc = RaftService(config, KeyValueStore(), http=(host, 0))
        await services.start(svc)
        client = Client("http://%s:%d" % svc.http_address, insecure=True, timeout=5)
        await until(lambda: svc.raft.status().role == "leader", what="a one-member leader")

        before = await scrape(client)
        assert before[("txraft_snapshot_bytes", ())] == 0
        assert before[("txraft_reads_total", (("outcome", "ok"),))] == 0
        for i in range(5):
            await client.put(f"k{i}", "v" * 100)
        for i in range(3):
            assert await client.get(f"k{i}") == b"v" * 100
        assert await client.get("k0", stale=True) == b"v" * 100  # not a linearizable read: not counted
        seen = await scrape(client)
        fsyncs = seen[("txraft_fsync_seconds_count", ())]
        # Every write is fsynced before it is acknowledged; the histogram
        # sees each fsync once its batch is done.
        assert 5 <= fsyncs <= svc.raft.core.storage.sync_count
        assert seen[("txraft_fsync_seconds_sum", ())] > 0
        assert seen[("txraft_reads_total", (("outcome", "ok"),))] == 3
        assert seen[("txraft_snapshot_bytes", ())] == 0

        for i in range(5, 30):
            await client.put(f"k{i}", "v" * 100)
        await until(lambda: svc.metrics.snapshots_taken >= 1, what="a snapshot")
        after = await scrape(client)
        # 20+ keys of 100 bytes are in the key-value store's snapshot.
        assert after[("txraft_snapshot_bytes", ())] > 20 * 100
        assert after[("txraft_fsync_seconds_count", ())] > fsyncs
        # The cluster page shows the same size beside the snapshot index.
        code, page = await client._request("GET", client._url() + "/ui/state")
        assert code == 200 and json.loads(page)["snapshot_bytes"] == after[("txraft_snapshot_bytes", ())]

    await defer.ensureDeferred(body()).addTimeout(30, reactor)
