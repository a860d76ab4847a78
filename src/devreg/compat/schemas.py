from pydantic import ConfigDict

from devreg.schemas import InputSchema, Schema, ShortText, UpdateSchema


class TutorialDeviceIn(InputSchema):
    # The tutorial's clients post its whole model, `id` included; it is ignored.
    model_config = ConfigDict(extra="ignore")

    name: ShortText


class TutorialDeviceUpdate(UpdateSchema):
    model_config = ConfigDict(extra="ignore")

    name: ShortText = None  # type: ignore[assignment]  # may be left out, never null


class TutorialItem(Schema):
    """The tutorials' response shape for devices and users alike."""

    id: int
    name: str


class Deleted(Schema):
    ok: bool = True
