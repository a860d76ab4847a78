"""Property tests (Hypothesis) of the pure parsers between the wire and the database: page
cursors, `attr.<key>` values, If-Match / If-None-Match headers, sort and sparse-field options,
and the checks on `attributes`.

Each parser must, for any input, either give a value of the documented kind or refuse with its
own clean error; never raise anything else (which the API would answer with a 500).
"""

import base64
import json
import math
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from devreg.conditional import IfMatch, etag, not_modified
from devreg.devices.filters import DeviceFilter
from devreg.devices.models import DeviceStatus
from devreg.devices.schemas import DeviceRead
from devreg.errors import InvalidCursor, InvalidParameter
from devreg.pagination import CURSOR_MAX_LENGTH as CURSOR_MAX
from devreg.pagination import Cursors, Position, Sort, describe_filters
from devreg.querystring import json_scalar, parse_fields
from devreg.schemas import ATTRIBUTES_MAX_DEPTH, BIGINT_MAX, JsonObject

# Pure functions: fast, so a few hundred examples each; the same ones on every run.
PROPERTIES = settings(max_examples=100, deadline=None, derandomize=True, database=None)
# Those drawing whole JSON documents: fewer, as each example costs more to make.
JSON_PROPERTIES = settings(PROPERTIES, max_examples=40)


ids = st.integers(min_value=0, max_value=BIGINT_MAX)
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets | st.just(UTC)
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)

# (the sort value's type, whether null is a value, values of that type)
SORT_VALUES = [
    pytest.param(int, False, ids, id="id"),
    pytest.param(str, False, st.text(st.characters(exclude_characters="\x00")), id="name"),
    pytest.param(datetime, False, aware_datetimes, id="created_at"),
    pytest.param(datetime, True, aware_datetimes | st.none(), id="last_seen_at"),
    pytest.param(float, False, st.floats(0, 1), id="relevance"),
]

json_scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=8,
)


def _cursors(value_type: type, nullable: bool, **filters: Any) -> Cursors:
    return Cursors("devices", Sort("key"), filters, value_type, nullable=nullable)


URLSAFE_BASE64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def _b64(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


# --- cursors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value_type", "nullable", "values"), SORT_VALUES)
@PROPERTIES
@given(data=st.data())
def test_a_cursor_decodes_to_the_position_it_was_made_for(
    value_type: type, nullable: bool, values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    cursors = _cursors(value_type, nullable)
    position = Position(value=data.draw(values, label="value"), id=data.draw(ids, label="id"))
    decoded = cursors.decode(cursors.encode(position))
    assert decoded == position
    assert type(decoded.value) is type(position.value)


@pytest.mark.parametrize(("value_type", "nullable", "values"), SORT_VALUES)
@PROPERTIES
@given(data=st.data())
def test_a_cursor_is_refused_by_other_filters_or_another_sort(
    value_type: type, nullable: bool, values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    position = Position(value=data.draw(values, label="value"), id=data.draw(ids, label="id"))
    cursor = _cursors(value_type, nullable, status=["active"]).encode(position)
    other_filters = _cursors(value_type, nullable, status=["retired"])
    other_sort = Cursors("devices", Sort("key", descending=True), {"status": ["active"]}, int)
    other_listing = Cursors("users", Sort("key"), {"status": ["active"]}, value_type)
    for cursors in (other_filters, other_sort, other_listing):
        with pytest.raises(InvalidCursor):
            cursors.decode(cursor)


def _assert_decodes_cleanly(cursors: Cursors, value_type: type, nullable: bool, raw: str) -> None:
    """`raw` decodes to a well-formed position or is refused with InvalidCursor, nothing else."""
    try:
        position = cursors.decode(raw)
    except InvalidCursor:
        return
    assert type(position.id) is int
    assert 0 <= position.id <= BIGINT_MAX
    if position.value is None:
        assert nullable
    else:
        assert type(position.value) is value_type
    if value_type is datetime and position.value is not None:
        assert position.value.tzinfo is not None
    if value_type is float and position.value is not None:
        assert 0 <= position.value <= 1


@pytest.mark.parametrize(("value_type", "nullable", "values"), SORT_VALUES)
@PROPERTIES
@given(raw=st.text(max_size=CURSOR_MAX))
@example(raw="")
@example(raw="=")
@example(raw="====")
@example(raw="\x00")
@example(raw="\ud800")
@example(raw=_b64(b"[" * 760))
@example(raw=_b64(b"\xff\xfe"))
def test_any_string_as_a_cursor_decodes_or_is_refused(
    value_type: type, nullable: bool, values: st.SearchStrategy[Any], raw: str
) -> None:
    _assert_decodes_cleanly(_cursors(value_type, nullable), value_type, nullable, raw)


@pytest.mark.parametrize(("value_type", "nullable", "values"), SORT_VALUES)
@JSON_PROPERTIES
@given(data=st.data())
def test_a_tampered_cursor_decodes_or_is_refused(
    value_type: type, nullable: bool, values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    """The right fingerprint with any JSON in place of the value and the id: a client editing a
    cursor it was given."""
    cursors = _cursors(value_type, nullable)
    payload = [
        cursors.fingerprint,
        data.draw(json_values | values.map(_wire), label="value"),
        data.draw(json_values | ids, label="id"),
    ]
    extra = data.draw(st.lists(json_values, max_size=2), label="extra items")
    raw = _b64(json.dumps([*payload, *extra]).encode())
    _assert_decodes_cleanly(cursors, value_type, nullable, raw)
    if extra:
        with pytest.raises(InvalidCursor):
            cursors.decode(raw)


@pytest.mark.parametrize(
    "edit",
    [
        lambda cursor: cursor + ".",
        lambda cursor: cursor + "!!!!",
        lambda cursor: cursor + "=",
        lambda cursor: f"{cursor[:4]} {cursor[4:]}",
        lambda cursor: cursor.replace("-", "+").replace("_", "/"),
        lambda cursor: cursor[:-1] + URLSAFE_BASE64[URLSAFE_BASE64.index(cursor[-1]) ^ 1],
    ],
    ids=["dot", "bangs", "padding", "space", "standard alphabet", "unused bits"],
)
def test_a_cursor_given_out_is_taken_only_as_given(edit: Callable[[str], str]) -> None:
    """Base64 decoders skip what is not of their alphabet and the bits a last character leaves
    unused: a cursor with something added or changed is another cursor, not the same one."""
    cursors = _cursors(str, False)
    # One with both characters only the URL-safe alphabet has, and a last character with bits
    # to spare (its length not a multiple of 4).
    cursor = next(
        encoded
        for n in range(1000)
        if {"-", "_"}
        <= set(encoded := cursors.encode(Position(value="?" * (n % 7) + ">~" * n, id=n)))
        and len(encoded) % 4
    )
    assert cursors.decode(cursor).id >= 0
    with pytest.raises(InvalidCursor):
        cursors.decode(edit(cursor))


def _wire(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@PROPERTIES
@given(row_id=st.integers().filter(lambda n: not 0 <= n <= BIGINT_MAX) | st.booleans())
def test_a_cursor_with_an_id_out_of_range_is_refused(row_id: int) -> None:
    cursors = _cursors(int, False)
    with pytest.raises(InvalidCursor):
        cursors.decode(_b64(json.dumps([cursors.fingerprint, 1, row_id]).encode()))


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, True, False, 10**400, 1e300, -0.5, 1.5]
)
def test_a_relevance_cursor_holds_a_similarity(value: Any) -> None:
    """NaN sorts after every number (the first page again), -Infinity before (an empty page);
    1e300, beyond a PostgreSQL real, was the statement's 422, not a bad cursor's 400."""
    cursors = _cursors(float, False)
    with pytest.raises(InvalidCursor):
        cursors.decode(_b64(json.dumps([cursors.fingerprint, value, 1]).encode()))


# --- attr.<key> values ------------------------------------------------------------------------


@PROPERTIES
@given(value=json_scalars)
def test_a_json_scalar_reads_as_itself(value: Any) -> None:
    parsed = json_scalar(json.dumps(value))
    assert parsed == value
    assert type(parsed) is type(value)


@PROPERTIES
@given(raw=st.text())
@example(raw="NaN")
@example(raw="-Infinity")
@example(raw="1e999")
@example(raw='"\\ud800"')
@example(raw="[" * 5_000)
@example(raw='{"a":' * 5_000)
def test_any_query_value_reads_as_a_scalar_or_as_text(raw: str) -> None:
    parsed = json_scalar(raw)
    if isinstance(parsed, str):
        assert parsed == raw or json.loads(raw) == parsed
    else:
        assert parsed is None or isinstance(parsed, bool | int | float)
        assert not isinstance(parsed, float) or math.isfinite(parsed)
        assert json.loads(raw) == parsed


@JSON_PROPERTIES
@given(value=json_values.filter(lambda value: isinstance(value, list | dict)))
def test_json_arrays_and_objects_read_as_text(value: Any) -> None:
    raw = json.dumps(value)
    assert json_scalar(raw) == raw


# --- If-Match and If-None-Match -------------------------------------------------------------

versions = st.integers(min_value=0, max_value=2**31 - 1)
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF))


@PROPERTIES
@given(header=header_text | st.text())
@example(header="*")
@example(header=" * ")
@example(header='"1", *')
@example(header='W/"1"')
@example(header='"99999999999999999999"')
@example(header='"-1"')
@example(header='"\u0661"')  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit, not to int()
@example(header='"' * 10_000)
def test_any_if_match_header_parses(header: str) -> None:
    """Into the versions it names, or a ValueError (a 400) for one that is no list of tags."""
    try:
        parsed = IfMatch.parse(header)
    except ValueError:
        assert header.strip() != "*"
        assert isinstance(not_modified(header, 1), bool)
        return
    if parsed.versions is None:
        assert header.strip() == "*"
    else:
        assert all(type(version) is int and version >= 0 for version in parsed.versions)
    assert isinstance(not_modified(header, 1), bool)


@PROPERTIES
@given(strong=st.lists(versions, max_size=5), weak=st.lists(versions, max_size=5))
def test_if_match_accepts_its_strong_tags_only(strong: list[int], weak: list[int]) -> None:
    tags = [etag(version) for version in strong] + [f"W/{etag(version)}" for version in weak]
    header = ", ".join(tags)
    if not tags:  # lists none: a 400 (check_tags)
        with pytest.raises(ValueError, match=r"^$"):
            IfMatch.parse(header)
        return
    parsed = IfMatch.parse(header)
    assert parsed.versions == frozenset(strong)
    for version in set(strong) | set(weak):
        assert parsed.accepts(version) is (version in strong)
        assert not_modified(header, version)  # If-None-Match compares weakly


@PROPERTIES
@given(version=versions, padding=st.text(alphabet=" \t", max_size=3))
def test_if_match_star_accepts_every_version(version: int, padding: str) -> None:
    assert IfMatch.parse(f"{padding}*{padding}").accepts(version)
    assert not_modified(f"{padding}*{padding}", version)


# --- sort and sparse fields -------------------------------------------------------------------

SORT_KEYS = ["id", "name", "created_at", "last_seen_at"]


@PROPERTIES
@given(raw=st.text() | st.sampled_from(SORT_KEYS).map(lambda key: f"-{key}") | st.none())
def test_any_sort_parses_or_is_refused(raw: str | None) -> None:
    default = Sort("id")
    try:
        sort = Sort.parse(raw, SORT_KEYS, default=default)
    except InvalidParameter as exc:
        assert exc.extensions == {"parameter": "sort"}  # noqa: PT017
    else:
        assert sort == default if raw is None else str(sort) == raw
        assert sort.key in SORT_KEYS


@PROPERTIES
@given(raw=st.text() | st.lists(st.sampled_from(list(DeviceRead.model_fields))).map(",".join))
def test_any_fields_option_parses_or_is_refused(raw: str) -> None:
    try:
        fields = parse_fields(raw, DeviceRead)
    except InvalidParameter as exc:
        assert exc.extensions == {"parameter": "fields"}  # noqa: PT017
    else:
        assert fields
        assert fields <= DeviceRead.model_fields.keys()


# --- attributes -------------------------------------------------------------------------------

attributes = TypeAdapter(JsonObject)


def _depth(value: Any) -> int:
    """Levels below the attributes object at which a value sits, counted as the limit is."""
    children = list(value.values()) if isinstance(value, dict) else value
    if not isinstance(children, list) or not children:
        return 0
    return 1 + max(_depth(child) for child in children)


def _storable(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    return not isinstance(value, float) or math.isfinite(value)


def _nested(levels: int, leaf: Any) -> Any:
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


@JSON_PROPERTIES
@given(value=st.dictionaries(st.text(), json_values | st.floats()))
def test_attributes_are_accepted_unchanged_or_refused(value: dict[str, Any]) -> None:
    """Accepted exactly when storable (no NUL, no surrogates, finite numbers) and within the
    depth limit; an accepted value is the value sent."""
    try:
        accepted = attributes.validate_python(value)
    except ValidationError:
        assert not (_storable(value) and _depth(value) <= ATTRIBUTES_MAX_DEPTH)
        return
    assert _storable(value)
    assert _depth(value) <= ATTRIBUTES_MAX_DEPTH
    assert json.dumps(accepted, sort_keys=True) == json.dumps(value, sort_keys=True)


@PROPERTIES
@given(levels=st.integers(min_value=0, max_value=3 * ATTRIBUTES_MAX_DEPTH), leaf=json_scalars)
def test_attributes_nest_up_to_the_depth_limit(levels: int, leaf: Any) -> None:
    value = {"k": _nested(levels, leaf)}
    storable = _storable(leaf)
    if levels + 1 <= ATTRIBUTES_MAX_DEPTH and storable:
        assert attributes.validate_python(value) == value
    else:
        with pytest.raises(ValidationError):
            attributes.validate_python(value)


def test_a_cursors_fingerprint_is_stable_across_releases() -> None:
    """Cursors handed out before an upgrade must still be accepted after it: the fingerprint of
    the same filters and sort never changes. (Values are in their JSON text's order, which the
    fingerprint has used since it took them as a set: until then a cursor made with values in
    another order was refused, and was refused once more after that upgrade.)"""
    filters = DeviceFilter(
        status=(DeviceStatus.ACTIVE,),
        owner_id=(3,),
        created_after=datetime(2026, 1, 1, tzinfo=UTC),
        attributes=(("k", ("x", 1, None)),),
        has_owner=False,
        search="pi",
    )
    cursors = Cursors("devices", Sort("name"), describe_filters(filters), str)
    assert cursors.fingerprint == "b729107e373b9945"


def test_repeated_filter_values_are_one_and_1_is_not_true() -> None:
    def fingerprint(**filters: Any) -> str:
        return Cursors(
            "devices", Sort("id"), describe_filters(DeviceFilter(**filters)), int
        ).fingerprint

    status = (DeviceStatus.ACTIVE,)
    assert fingerprint(status=status * 2) == fingerprint(status=status)
    assert fingerprint(attributes=(("k", (1, 1)),)) == fingerprint(attributes=(("k", (1,)),))
    assert fingerprint(attributes=(("k", (1, True)),)) != fingerprint(attributes=(("k", (1,)),))


def test_the_same_instant_with_another_offset_is_the_same_filter() -> None:
    """A client writing `created_after` in its own offset on the next page keeps its cursor."""

    def fingerprint(created_after: datetime) -> str:
        filters = describe_filters(DeviceFilter(created_after=created_after))
        return Cursors("devices", Sort("id"), filters, int).fingerprint

    instant = datetime(2026, 1, 1, tzinfo=UTC)
    paris = instant.astimezone(timezone(timedelta(hours=1)))
    assert fingerprint(paris) == fingerprint(instant)
    assert fingerprint(instant + timedelta(microseconds=1)) != fingerprint(instant)
