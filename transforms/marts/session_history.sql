-- depends_on: stg_bizstim__sessions
-- incremental_key: session_id
--
-- analytics.session_history: every version of every session the pipeline has seen (dlt scd2).
--
--   session_id                           BIGINT
--   version_number                       INTEGER      1, 2, ... per session in valid_from order
--   status                               VARCHAR      as in analytics.sessions
--   is_confirmed                         BOOLEAN
--   client_id, practitioner_id, service_id, location_id
--                                        BIGINT
--   description                          VARCHAR
--   session_date                         DATE
--   local_start, local_end               TIMESTAMP
--   timezone                             VARCHAR
--   start_utc, end_utc                   TIMESTAMPTZ
--   duration_minutes                     INTEGER
--   valid_from                           TIMESTAMPTZ  when this version was first loaded
--   valid_to                             TIMESTAMPTZ  when it was replaced or vanished; NULL if current
--   is_current                           BOOLEAN      this version is the one in analytics.sessions
--   is_deleted                           BOOLEAN      the session's last version, and the session
--                                                     is gone from the API (no current version)
--
-- Data issues are reported for current versions only; older versions are not re-reported.
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.session_history as

with versions as (
    select * from stg_bizstim__sessions
),

final as (
    select
        session_id,
        version_number,
        status,
        is_confirmed,
        client_id,
        practitioner_id,
        service_id,
        location_id,
        description,
        session_date,
        local_start,
        local_end,
        timezone,
        start_utc,
        end_utc,
        duration_minutes,
        valid_from,
        valid_to,
        is_current,
        is_last_version and has_no_live_version as is_deleted,
        account
    from versions
)

select * from final
order by account, session_id, version_number;
