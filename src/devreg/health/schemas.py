from typing import Literal

from devreg.schemas import Schema


class Liveness(Schema):
    status: Literal["ok"] = "ok"


class Readiness(Schema):
    status: Literal["ok", "error"]
    db: Literal["reachable", "unreachable", "not migrated"]
