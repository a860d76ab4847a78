"""Synthetic data for development and benchmarks: realistic-looking users and devices, made by
PostgreSQL itself (generate_series) in one statement for both tables."""

import secrets
from dataclasses import dataclass

from sqlalchemy import text

from devreg.changes.service import without_change_log
from devreg.db.bulk_load import bulk_loading
from devreg.db.session import UnitOfWork
from devreg.devices.models import Device

# The number in a device's name: at least 7 digits, all of them beyond.
NUMBER_IN_NAME = "lpad(g::text, greatest(7, length(g::text)), '0')"

_SEED = f"""
WITH created AS (
    INSERT INTO users (name, email)
    SELECT first_name || ' ' || last_name,
           lower(first_name || '.' || last_name || '.' || :run || g || '@example.org')
    FROM generate_series(1, :users) AS g,
    LATERAL (SELECT
        (ARRAY['Ada', 'Alan', 'Barbara', 'Claude', 'Donald', 'Edsger', 'Frances', 'Grace',
               'Hedy', 'John', 'Katherine', 'Ken', 'Linus', 'Margaret', 'Niklaus', 'Radia',
               'Sophie', 'Tim', 'Whitfield', 'Yukihiro'])[1 + g % 20] AS first_name,
        (ARRAY['Lovelace', 'Turing', 'Liskov', 'Shannon', 'Knuth', 'Dijkstra', 'Allen',
               'Hopper', 'Lamarr', 'Backus', 'Johnson', 'Thompson', 'Torvalds', 'Hamilton',
               'Wirth', 'Perlman', 'Wilson', 'Berners-Lee', 'Diffie', 'Matsumoto'])
            [1 + (g * 7) % 20] AS last_name
    ) AS names
    RETURNING id
),
-- This run's users may not have consecutive ids: another run, or the API, may be creating
-- users at the same time.
owners AS (SELECT coalesce(array_agg(id), '{{}}') AS ids FROM created),
devices_made AS (
    INSERT INTO devices
        (name, serial_number, model, status, owner_id, tags, attributes, last_seen_at)
    SELECT
        kind || '-' || {NUMBER_IN_NAME},
        'SN-' || :run || '-' || lpad(to_hex(g), 8, '0'),
        model,
        (ARRAY['active', 'active', 'active', 'inactive', 'retired'])[1 + g % 5],
        CASE WHEN cardinality(ids) = 0 OR g % 10 = 0 THEN NULL
             ELSE ids[1 + (g * 7919) % cardinality(ids)] END,
        string_to_array((ARRAY['lab,eu', 'prod,eu', 'prod,us', 'edge,asia', 'test,us',
                               'spare,eu'])[1 + g % 6], ',')
            || CASE WHEN g % 4 = 0 THEN ARRAY['critical'] ELSE ARRAY[]::text[] END,
        jsonb_build_object('rack', g % 40, 'room', chr(65 + (g % 6)::int),
                           'firmware', '1.' || g % 7 || '.' || g % 3, 'managed', g % 2 = 0),
        CASE WHEN g % 7 = 0 THEN NULL
             ELSE now() - make_interval(secs => (g * 37) % 2592000) END
    FROM owners, generate_series(1, CAST(:devices AS bigint)) AS g,
    LATERAL (SELECT
        (ARRAY['sensor', 'gateway', 'camera', 'thermostat', 'router', 'meter', 'tracker',
               'display'])[1 + g % 8] AS kind,
        (ARRAY['Raspberry Pi 4', 'Raspberry Pi 5', 'Jetson Nano', 'Arduino Uno', 'ESP32-S3',
               'BeagleBone Black', 'Intel NUC 13', 'Pico W'])[1 + (g * 3) % 8] AS model
    ) AS kinds
)
SELECT cardinality(ids) FROM owners
"""  # noqa: S608 - constant SQL


@dataclass(frozen=True)
class Seeded:
    users: int
    devices: int


async def seed(work: UnitOfWork, *, users: int, devices: int) -> Seeded:
    """Add `users` users and `devices` devices (owned by the new users, 90% of them).

    A large seed into a registry holding fewer devices locks the devices table until it is done
    (db.bulk_load)."""
    run = secrets.token_hex(3)  # keeps serials and emails unique across seed runs
    # Synthetic rows are not changes anyone made: the change log stays out of it.
    await without_change_log(work)
    async with bulk_loading(work, Device, adding=devices) as devices_analyzed:
        made = await work.session.scalar(
            text(_SEED), {"run": run, "users": users, "devices": devices}
        )
    # The planner's statistics, which autovacuum would bring up to date a minute or so later:
    # until then its estimates (`count=estimated`, and the plans) were of the tables before.
    await work.session.execute(
        text("ANALYZE users" if devices_analyzed else "ANALYZE users, devices")
    )
    return Seeded(users=int(made or 0), devices=devices)
