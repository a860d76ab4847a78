from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status

from devreg.db.session import SessionDep
from devreg.devices.schemas import DevicePage
from devreg.errors import problem_responses
from devreg.pagination import PageDep
from devreg.schemas import BIGINT_MAX
from devreg.users import service
from devreg.users.schemas import UserCreate, UserPage, UserRead, UserUpdate

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="The user's id.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=problem_responses(409, 422),
)
async def create_user(
    data: UserCreate, session: SessionDep, request: Request, response: Response
) -> object:
    user = await service.register_user(session, data=data)
    response.headers["Location"] = str(request.url_for("get_user", user_id=user.id))
    return user


@router.get("", response_model=UserPage, responses=problem_responses(400, 422))
async def list_users(session: SessionDep, page: PageDep) -> object:
    return await service.list_users(session, page=page)


@router.get("/{user_id}", response_model=UserRead, responses=problem_responses(404, 422))
async def get_user(user_id: UserId, session: SessionDep) -> object:
    return await service.get_user(session, user_id)


@router.patch("/{user_id}", response_model=UserRead, responses=problem_responses(404, 409, 422))
async def update_user(user_id: UserId, data: UserUpdate, session: SessionDep) -> object:
    return await service.update_user(session, user_id, data=data)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 409, 422),
)
async def delete_user(
    user_id: UserId,
    session: SessionDep,
    cascade: Annotated[
        Literal["devices"] | None,
        Query(description="`devices` deletes the user's devices along with the user."),
    ] = None,
) -> None:
    await service.delete_user(session, user_id, cascade_devices=cascade == "devices")


@router.get(
    "/{user_id}/devices", response_model=DevicePage, responses=problem_responses(400, 404, 422)
)
async def list_user_devices(user_id: UserId, session: SessionDep, page: PageDep) -> object:
    return await service.list_user_devices(session, user_id, page=page)
