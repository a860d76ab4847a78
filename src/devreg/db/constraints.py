from sqlalchemy.exc import DBAPIError


def violated_constraint(exc: DBAPIError) -> str | None:
    """The name of the constraint behind an IntegrityError, as PostgreSQL reported it."""
    driver_error = getattr(exc.orig, "driver_exception", None)
    name = getattr(driver_error, "constraint_name", None)
    return name if isinstance(name, str) else None
