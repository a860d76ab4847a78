"""`devreg users ...` and `devreg devices ...`: the same services as the HTTP API."""

from typing import Annotated

import typer

from devreg.auth.principal import FULL_ACCESS
from devreg.cli.common import (
    Cursor,
    DeviceIdArgument,
    JsonFlag,
    Limit,
    parse_id,
    run_in_transaction,
    show,
    show_page,
    validated,
)
from devreg.cli.output import stdout
from devreg.devices import service as devices_service
from devreg.devices.filters import DeviceFilter
from devreg.devices.models import DeviceStatus
from devreg.devices.schemas import DeviceCreate, DevicePage
from devreg.pagination import PAGE_LIMIT_DEFAULT, PageRequest
from devreg.users import service as users_service
from devreg.users.filters import UserFilter
from devreg.users.schemas import UserCreate, UserPage, UserRead

users_app = typer.Typer(help="Create and list users.", no_args_is_help=True)
devices_app = typer.Typer(help="Create, show, list and delete devices.", no_args_is_help=True)


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Option(help="The user's name.")],
    email: Annotated[str | None, typer.Option(help="Unique, case-insensitively.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a user."""
    data = validated(UserCreate, name=name, email=email)
    user = run_in_transaction(
        lambda work: users_service.register_user(work, data=data, principal=FULL_ACCESS)
    )
    show(UserRead.model_validate(user), as_json=as_json)


@users_app.command("list")
def users_list(
    limit: Limit = PAGE_LIMIT_DEFAULT, cursor: Cursor = None, as_json: JsonFlag = False
) -> None:
    """List users, a page at a time."""
    page = PageRequest(limit=limit, cursor=cursor)
    result = run_in_transaction(
        lambda work: users_service.list_users(
            work, filters=UserFilter(), page=page, principal=FULL_ACCESS
        )
    )
    show_page(UserPage, result, ("id", "name", "email"), as_json=as_json)


@devices_app.command("create")
def devices_create(
    name: Annotated[str, typer.Option(help="The device's name.")],
    serial_number: Annotated[str | None, typer.Option("--serial-number", "--serial")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    status: Annotated[DeviceStatus | None, typer.Option()] = None,
    owner_id: Annotated[
        int | None, typer.Option(parser=parse_id, help="The owning user's id.")
    ] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="Repeat for more tags.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a device."""
    data = validated(
        DeviceCreate,
        {"tags": "--tag"},
        name=name,
        serial_number=serial_number,
        model=model,
        status=status,
        owner_id=owner_id,
        tags=tags,
    )
    device = run_in_transaction(
        lambda work: devices_service.register_device(work, data=data, principal=FULL_ACCESS)
    )
    show(device, as_json=as_json)


@devices_app.command("get")
def devices_get(device_id: DeviceIdArgument, as_json: JsonFlag = False) -> None:
    """Show one device."""
    device = run_in_transaction(
        lambda work: devices_service.get_device(work, device_id, principal=FULL_ACCESS)
    )
    show(device, as_json=as_json)


@devices_app.command("list")
def devices_list(
    limit: Limit = PAGE_LIMIT_DEFAULT, cursor: Cursor = None, as_json: JsonFlag = False
) -> None:
    """List devices, a page at a time."""
    page = PageRequest(limit=limit, cursor=cursor)
    result = run_in_transaction(
        lambda work: devices_service.list_devices(
            work, filters=DeviceFilter(), page=page, principal=FULL_ACCESS
        )
    )
    columns = ("id", "name", "serial_number", "model", "status", "owner_id")
    show_page(DevicePage, result, columns, as_json=as_json)


@devices_app.command("delete")
def devices_delete(device_id: DeviceIdArgument) -> None:
    """Delete a device."""
    run_in_transaction(
        lambda work: devices_service.delete_device(work, device_id, principal=FULL_ACCESS)
    )
    stdout.print(f"device {device_id} deleted")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(devices_app, name="devices")
