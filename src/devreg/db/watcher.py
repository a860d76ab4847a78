"""A serving worker's watch over the embedded cluster: started again when its server crashed,
as a service manager restarts a crashed daemon."""

import asyncio
import logging

from devreg.db.embedded import EmbeddedCluster
from devreg.db.programs import EmbeddedPostgresError

logger = logging.getLogger(__name__)

# How often a serving worker looks for a crashed cluster, and the longest it waits between
# attempts to start one again that fail (a disk still full, say).
_WATCH_SECONDS = 2.0
_RETRY_SECONDS_MAX = 60.0


async def keep_running(cluster: EmbeddedCluster) -> None:
    """Start the cluster again when its server has crashed, as a service manager restarts a
    crashed daemon: the API would otherwise answer 503 until someone ran devreg again. Every
    worker looks; its lock lets one of them start it."""
    wait = _WATCH_SECONDS
    # A start that failed takes the crashed server's postmaster.pid with it.
    failed = False
    while True:
        await asyncio.sleep(wait)
        if not (failed or cluster.has_crashed()):
            continue
        try:
            # A start that failed is tried again whatever it left; a crash is judged again
            # holding the lock.
            start = cluster.start_for_servers if failed else cluster.restart_if_crashed
            started = await asyncio.to_thread(start)
        except (EmbeddedPostgresError, OSError) as exc:
            logger.error("the embedded PostgreSQL has stopped, and could not start again: %s", exc)
            failed, wait = True, min(wait * 2, _RETRY_SECONDS_MAX)
            continue
        failed, wait = False, _WATCH_SECONDS
        if started:
            logger.warning("the embedded PostgreSQL had stopped without being asked to: restarted")
