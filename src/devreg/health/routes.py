"""Probes: liveness never touches the database; readiness answers within HEALTH_TIMEOUT, and
says whether the database can serve requests (reachable, and migrated)."""

from typing import Any

from fastapi import APIRouter, Request, Response, status

from devreg.config import Settings
from devreg.db.server import database_state
from devreg.health.schemas import Liveness, Readiness
from devreg.problems import problem_responses

router = APIRouter(tags=["health"])

# The edge's answer to a query string that is not UTF-8, which health checks get too.
_REFUSED = problem_responses(400)
_NOT_READY: dict[int | str, dict[str, Any]] = {
    **_REFUSED,
    503: {
        "model": Readiness,
        "description": "PostgreSQL cannot be reached, or its schema is behind this release's",
    },
}


LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"
TUTORIAL_READINESS_PATH = "/api/v1/health-check/db"
HEALTH_PATHS = (LIVENESS_PATH, READINESS_PATH, TUTORIAL_READINESS_PATH)


@router.get(LIVENESS_PATH, response_model=Liveness, responses=_REFUSED)
async def livez() -> Liveness:
    return Liveness()


async def _readiness(request: Request, response: Response) -> Readiness:
    settings: Settings = request.app.state.settings
    db = await database_state(request.state.engine, within_seconds=settings.health_timeout)
    if db == "reachable":
        return Readiness(status="ok", db=db)
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="error", db=db)


router.add_api_route(
    READINESS_PATH, _readiness, response_model=Readiness, responses=_NOT_READY, name="readyz"
)
# The tutorial's path for the same check.
router.add_api_route(
    TUTORIAL_READINESS_PATH,
    _readiness,
    response_model=Readiness,
    responses=_NOT_READY,
    name="health_check_db",
)
