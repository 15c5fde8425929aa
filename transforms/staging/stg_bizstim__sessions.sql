-- requires: bizstim.sessions
-- incremental_by: id
-- incremental_if: id = cast(parse_int(id) as varchar)
--
-- Bizstim sessions, renamed and typed: every scd2 version of every session (marts pick current
-- rows via is_current). Each row carries `issues`, the problems met while typing it; only those of
-- current rows are reported (marts/data_issues__bizstim_sessions.sql).
--
-- Dates and times are wall-clock values in the account's zone (`timezone` of the API response).
-- local_* keep that wall clock; *_utc are the real instants, NULL when the zone is unknown.

create or replace temp table stg_bizstim__sessions as

-- `not materialized` (here and below): scd2_history reads the rows twice (02_scd2_history.sql).
with source as not materialized (
    select * from raw_bizstim__sessions
),

known_zones as (
    select name as zone_name from pg_timezone_names()
),

renamed as not materialized (
    select
        source.account,
        source.id as record_id,
        parse_int(source.id) as session_id,
        case trim(source.session_status)
            when '0' then 'open'
            when '1' then 'canceled'
            when '2' then 'missed'
            when '3' then 'saved'
        end as status,
        parse_flag(source.confirmed) as is_confirmed,
        parse_flag(source.multi) as is_group,
        parse_flag(source.display) as is_displayed,
        parse_flag(source.recurr_on) as is_recurring,
        parse_flag(source.session_reminder) as has_reminder_sent,
        parse_flag(source.session_sms) as has_sms_sent,
        parse_flag(source.assessment_moderation) as is_moderation_required,
        parse_flag(source.assessment_present) as has_assessment,
        parse_int32(source.slots) as slots,
        parse_int(source.client_id) as client_id,
        -- The field table says pract_d, the example rows say pract_id: take whichever is filled.
        parse_int(coalesce(nullif(trim(source.pract_id), ''), source.pract_d)) as practitioner_id,
        parse_int(source.service_id) as service_id,
        parse_int(source.location_id) as location_id,
        parse_int(source.class_id) as class_id,
        parse_int(source.wage_id) as wage_id,
        parse_int(source.client_due_id) as client_due_id,
        parse_int(source.recurr_id) as recurr_id,
        parse_int(source.custom_map_id) as custom_map_id,
        -- temp is 0 for a normal session, else the id of the original session.
        nullif(parse_int(source.temp), 0) as temp_session_id,
        -- A QuickBooks id: kept as text; '0' means no invoice.
        nullif(nullif(trim(source.qb_invoice_id), ''), '0') as qb_invoice_id,
        source.session_description as description,
        source.session_note as note,
        source.session_private_note as private_note,
        source.session_other_note as other_note,
        source.cancel_clients,
        parse_date(source.session_date) as session_date,
        parse_time(source.session_start_time) as start_time,
        parse_time(source.session_end_time) as end_time,
        coalesce(known_zones.zone_name, source.timezone) as timezone,
        known_zones.zone_name as known_zone,
        source._dlt_valid_from as valid_from,
        source._dlt_valid_to as valid_to,
        source._dlt_load_id as load_id,
        source._raw_row as row_key,
        -- Rows of one session share its id; a row without a readable id is a session of its own.
        -- Ids are unique within an account only: the same id in two accounts is two sessions.
        -- The id as read: '7', ' 7' and '007' are one session (dlt keeps them as three records,
        -- and as three groups they were three current rows of session 7, failing the key test
        -- of every night's build); the latest current version wins, as for any two.
        source.account || ':'
            || coalesce(cast(parse_int(source.id) as varchar), source.id, source._dlt_id)
            as version_group,
        list_filter([
            issue('id', source.id,
                case
                    when source.id is null then null  -- the extractor reports a missing id
                    when parse_int(source.id) is null then 'not an integer'
                end),
            issue('session_status', source.session_status,
                case when source.session_status is not null
                    and trim(source.session_status) not in ('0', '1', '2', '3')
                    then 'unknown status code' end),
            issue('confirmed', source.confirmed, flag_problem(source.confirmed)),
            issue('multi', source.multi, flag_problem(source.multi)),
            issue('display', source.display, flag_problem(source.display)),
            issue('recurr_on', source.recurr_on, flag_problem(source.recurr_on)),
            issue('session_reminder', source.session_reminder, flag_problem(source.session_reminder)),
            issue('session_sms', source.session_sms, flag_problem(source.session_sms)),
            issue('assessment_moderation', source.assessment_moderation,
                flag_problem(source.assessment_moderation)),
            issue('assessment_present', source.assessment_present,
                flag_problem(source.assessment_present)),
            issue('slots', source.slots, int32_problem(source.slots)),
            issue('client_id', source.client_id, int_problem(source.client_id)),
            issue('pract_id', source.pract_id,
                case when trim(source.pract_id) <> '' then int_problem(source.pract_id) end),
            issue('pract_d', source.pract_d,
                case when coalesce(trim(source.pract_id), '') = '' then int_problem(source.pract_d) end),
            issue('service_id', source.service_id, int_problem(source.service_id)),
            issue('location_id', source.location_id, int_problem(source.location_id)),
            issue('class_id', source.class_id, int_problem(source.class_id)),
            issue('wage_id', source.wage_id, int_problem(source.wage_id)),
            issue('client_due_id', source.client_due_id, int_problem(source.client_due_id)),
            issue('recurr_id', source.recurr_id, int_problem(source.recurr_id)),
            issue('custom_map_id', source.custom_map_id, int_problem(source.custom_map_id)),
            issue('temp', source.temp, int_problem(source.temp)),
            issue('session_date', source.session_date, date_problem(source.session_date)),
            issue('session_start_time', source.session_start_time,
                time_problem(source.session_start_time)),
            issue('session_end_time', source.session_end_time, time_problem(source.session_end_time)),
            issue('timezone', source.timezone,
                case
                    when source.timezone is not null and known_zones.zone_name is null
                        then 'unknown time zone'
                    -- no zone in the answer: the wall clock is known, the instants are not
                    when source.timezone is null and parse_date(source.session_date) is not null
                        then 'missing time zone'
                end)
        ], lambda i: i.problem is not null) || ingest_issues(source._ingest_issues) as issues
    from source
    -- Zone names are unique ignoring case, and ICU accepts any casing.
    left join known_zones on lower(known_zones.zone_name) = lower(trim(source.timezone))
),

localized as not materialized (
    select
        *,
        session_date + start_time as local_start,
        -- An end earlier than the start means the session runs past midnight.
        end_time < start_time as is_overnight,
        session_date + end_time
            + case when end_time < start_time then interval 1 day else interval 0 day end as local_end
    from renamed
),

-- ICU time-zone lookups are the slow part of this model, and sessions share few dates: the
-- offsets in force around each (zone, date) are looked up once. Where they are equal from the day
-- before to three days after (UTC midnights), no transition is near and UTC is plain arithmetic;
-- only sessions near transitions take the full ICU path (same results: tests/test_timezones.py).
-- Three days, not two: an overnight session ends on the next local day, as late as 23:59, which
-- in a zone west of UTC is past the second UTC midnight (Santiago and Easter Island change their
-- clocks at local midnight). The pairs come from the raw text (few distinct values), typed as
-- `renamed` types them.
zone_days as (
    select distinct known_zones.zone_name as zone, parse_date(raw.session_date) as day
    from (select distinct timezone, session_date from source) as raw
    join known_zones on lower(known_zones.zone_name) = lower(trim(raw.timezone))
    where parse_date(raw.session_date) is not null
),

zone_day_offsets as (
    select
        zone,
        day,
        utc_offset_us(zone, epoch_us(day::timestamp) - 86400000000) as offset_before,
        utc_offset_us(zone, epoch_us(day::timestamp) + 3 * 86400000000) as offset_after
    from zone_days
),

converted as not materialized (
    select
        localized.*,
        -- known_zone is NULL for an unknown zone, so AT TIME ZONE never sees a bad name.
        case when offsets.offset_before = offsets.offset_after
            then to_timestamp((epoch_us(local_start) - offsets.offset_before) // 1000000)
            else local_start at time zone known_zone
        end as start_utc,
        case when offsets.offset_before = offsets.offset_after
            then to_timestamp((epoch_us(local_end) - offsets.offset_before) // 1000000)
            else local_end at time zone known_zone
        end as end_utc,
        case when offsets.offset_before = offsets.offset_after and local_start is not null
            then 1 else wall_clock_readings(local_start, known_zone)
        end as start_readings,
        case when offsets.offset_before = offsets.offset_after and local_end is not null
            then 1 else wall_clock_readings(local_end, known_zone)
        end as end_readings
    from localized
    left join zone_day_offsets as offsets
        on offsets.zone = localized.known_zone and offsets.day = localized.session_date
),

versions as not materialized (
    select
        *,
        ((epoch_us(end_utc) - epoch_us(start_utc)) // 60000000)::integer as duration_minutes,
        start_readings = 0 as is_start_in_dst_gap,
        start_readings = 2 as is_start_in_dst_overlap,
        end_readings = 0 as is_end_in_dst_gap,
        end_readings = 2 as is_end_in_dst_overlap,
        -- Bizstim has no soft delete: a session gone from the API just has no current version.
        true as is_live
    from converted
),

-- is_current, version_number, is_last_version, has_no_live_version (02_scd2_history.sql); the
-- columns only this model needed are left out, which keeps the (in-memory) table smaller
final as (
    select * exclude (
        known_zone, start_time, end_time, start_readings, end_readings, version_group, load_id,
        is_live
    )
    from scd2_history('versions')
)

select * from final;
