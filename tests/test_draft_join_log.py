"""A draft node that cannot join is said in the gateway's log, once per address and status: the
pool tries every endpoint at each refresh (a real gRPC Info call to a port nobody listens on)."""

import logging
import types

from gateway.draft_pool import DraftPool
from minedraft.config import TimeoutConfig

from cluster import free_port


def test_a_node_that_cannot_join_is_logged_once(caplog):
    address = f"127.0.0.1:{free_port()}"
    target = types.SimpleNamespace(timeouts=TimeoutConfig())  # only its timeouts are read before Info fails
    pool = DraftPool([address], target, target_info=None, transport=None)
    try:
        with caplog.at_level(logging.WARNING, logger="minedraft"):
            pool.refresh()
            pool.refresh()
        said = [r.getMessage() for r in caplog.records if "could not join" in r.getMessage()]
        assert len(said) == 1, said
        assert address in said[0] and "UNAVAILABLE" in said[0]
        assert pool.join_failures == {address: "UNAVAILABLE"} and not pool.nodes
    finally:
        pool.close()
