"""docs/operations.md lists exactly the metrics a real scrape exposes, with their types."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from replica.replica import Replica
from transport.service import mesh_service_factory

from tests.ops.opskit import aget
from tests.transport.meshkit import mesh, running, wait_converged

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `(agentstate_[a-z_]+)` \| (gauge|counter|histogram) \|", re.MULTILINE)


def documented() -> dict[str, str]:
    """Metric name -> type, from the table in docs/operations.md."""
    return dict(ROW.findall(DOC.read_text()))


async def test_every_documented_metric_is_scraped_and_every_scraped_one_documented(tmp_path: Path) -> None:
    server = Replica.open(tmp_path / "server")
    peer = Replica.open(tmp_path / "peer")
    try:
        server.tasks.create("one")
        service = mesh_service_factory(server, {"listen": "127.0.0.1:0"})
        assert service is not None
        async with running(service.mesh):
            async with running(mesh(peer, listen=None, peers=[service.mesh.url])):
                await wait_converged(server, peer)
                url = service.mesh.url
                assert url is not None
                status, _, text = await aget("http://" + url.removeprefix("ws://").split("/", 1)[0] + "/metrics")
        assert status == 200
    finally:
        peer.close()
        server.close()
    scraped = {}
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        scraped[name] = family.type
    listed = documented()
    assert len(listed) >= 10
    assert sorted(set(listed) - set(scraped)) == [], "documented but not scraped"
    assert sorted(set(scraped) - set(listed)) == [], "scraped but not documented in docs/operations.md"
    assert scraped == listed, "types differ between the doc and the scrape"
