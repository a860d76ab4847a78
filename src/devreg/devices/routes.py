from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from devreg.db.session import SessionDep
from devreg.devices import service
from devreg.devices.schemas import DeviceCreate, DevicePage, DeviceRead, DeviceUpdate
from devreg.errors import problem_responses
from devreg.pagination import PageDep
from devreg.schemas import BIGINT_MAX

router = APIRouter(prefix="/devices", tags=["devices"])

DeviceId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="The device's id.")]

WRITE_ERRORS = problem_responses(404, 409, 422)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceRead,
    responses=problem_responses(409, 422),
)
async def create_device(
    data: DeviceCreate, session: SessionDep, request: Request, response: Response
) -> object:
    device = await service.register_device(session, data=data)
    response.headers["Location"] = str(request.url_for("get_device", device_id=device.id))
    return device


@router.get("", response_model=DevicePage, responses=problem_responses(400, 422))
async def list_devices(session: SessionDep, page: PageDep) -> object:
    return await service.list_devices(session, page=page)


@router.get("/{device_id}", response_model=DeviceRead, responses=problem_responses(404, 422))
async def get_device(device_id: DeviceId, session: SessionDep) -> object:
    return await service.get_device(session, device_id)


@router.put("/{device_id}", response_model=DeviceRead, responses=WRITE_ERRORS)
async def replace_device(device_id: DeviceId, data: DeviceCreate, session: SessionDep) -> object:
    return await service.replace_device(session, device_id, data=data)


@router.patch("/{device_id}", response_model=DeviceRead, responses=WRITE_ERRORS)
async def update_device(device_id: DeviceId, data: DeviceUpdate, session: SessionDep) -> object:
    return await service.update_device(session, device_id, data=data)


@router.delete(
    "/{device_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 422),
)
async def delete_device(device_id: DeviceId, session: SessionDep) -> None:
    await service.delete_device(session, device_id)
