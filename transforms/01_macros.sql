-- Setup: helpers shared by the staging models. TEMP, like the staging tables: they live only on
-- the connection that runs the build and never become part of the warehouse.
--
-- Conventions for raw text values (every raw column is VARCHAR as the vendor sent it):
--   NULL  the field was not sent: typed as NULL, never reported.
--   ''    "not set" for optional numbers: NULL, not reported; for flags, dates, times, codes: reported.
--   other unreadable text: NULL plus a data issue. A bad value never drops its row.

-- One data issue as a struct, NULL where there is no problem; the staging models collect a list
-- of these per row and keep the ones with a problem. Most values have none: building a struct
-- only for those made the sessions model ~15% faster at a million rows.
create or replace temp macro issue(field, value, problem) as
    case when problem is not null then {'field': field, 'value': value, 'problem': problem} end;

-- Integers: plain digits, spaces around ignored. TRY_CAST alone would also accept '3.0' or '1e3'.
create or replace temp macro parse_int(raw) as
    case when regexp_full_match(raw, ' *[+-]?\d+ *') then try_cast(trim(raw) as bigint) end;

create or replace temp macro int_problem(raw) as
    case when trim(raw) <> '' and parse_int(raw) is null then 'not an integer' end;

-- INTEGER columns (counts, slots): a whole number beyond INTEGER's range is NULL and reported,
-- where a bare TRY_CAST made it NULL with no issue.
create or replace temp macro parse_int32(raw) as try_cast(parse_int(raw) as integer);

create or replace temp macro int32_problem(raw) as
    case
        when trim(raw) <> '' and parse_int(raw) is null then 'not an integer'
        when parse_int(raw) is not null and parse_int32(raw) is null then 'integer out of range'
    end;

-- Money and other decimal amounts: plain decimal notation, rounded to cents.
create or replace temp macro parse_decimal(raw) as
    case when regexp_full_match(raw, ' *[+-]?\d+(\.\d+)? *')
        then try_cast(trim(raw) as decimal(18, 2)) end;

create or replace temp macro decimal_problem(raw) as
    case when trim(raw) <> '' and parse_decimal(raw) is null then 'not a number' end;

-- Bizstim 0/1 flags.
create or replace temp macro parse_flag(raw) as
    case trim(raw) when '1' then true when '0' then false end;

create or replace temp macro flag_problem(raw) as
    case when raw is not null and parse_flag(raw) is null then 'not a 0/1 flag' end;

-- TimeTap JSON booleans, stringified by the extractor.
create or replace temp macro parse_bool(raw) as
    case lower(trim(raw)) when 'true' then true when 'false' then false end;

create or replace temp macro bool_problem(raw) as
    case when raw is not null and parse_bool(raw) is null then 'not a boolean' end;

-- Bizstim dates: 'YYYY-MM-DD' only. Zero dates ('0000-00-00') and impossible ones ('2022-02-30')
-- fail the cast; so does year 0000, which DuckDB would read as 1 BC.
create or replace temp macro parse_date(raw) as
    case when regexp_full_match(raw, ' *\d{4}-\d{2}-\d{2} *') and trim(raw) not like '0000-%'
        then try_cast(trim(raw) as date) end;

create or replace temp macro date_problem(raw) as
    case
        when trim(raw) = '' then 'missing date'
        when raw is not null and parse_date(raw) is null then 'not a valid date'
    end;

-- Bizstim wall-clock times: 'HH:MM' or 'HH:MM:SS', 00:00 to 24:00 (ISO 8601's end of the day: a
-- session ending at 24:00 ends at the next midnight).
create or replace temp macro parse_time(raw) as
    case when regexp_full_match(raw, ' *\d{1,2}:\d{2}(:\d{2})? *') then try_cast(trim(raw) as time) end;

create or replace temp macro time_problem(raw) as
    case
        when trim(raw) = '' then 'missing time'
        when raw is not null and parse_time(raw) is null then 'not a valid time'
    end;

-- TimeTap instants: epoch milliseconds. Anything outside [2000-01-01, 2100-01-01) is treated as
-- garbage (negative numbers, seconds mistaken for milliseconds, sentinels like 253402300799000).
create or replace temp macro parse_epoch_ms(raw) as
    case when parse_int(raw) >= 946684800000 and parse_int(raw) < 4102444800000
        then timezone('UTC', make_timestamp(parse_int(raw) * 1000)) end;

create or replace temp macro epoch_ms_problem(raw) as
    case
        when trim(raw) = '' or raw is null then null
        when parse_int(raw) is null then 'not an epoch-milliseconds timestamp'
        when parse_epoch_ms(raw) is null then 'timestamp out of range (before 2000 or after 2100)'
    end;

-- A TimeTap date that must be there: empty text is reported (a missing field is not a value).
create or replace temp macro dated_problem(raw) as
    case when trim(raw) = '' then 'empty date' else epoch_ms_problem(raw) end;

-- JSON text from the extractor: NULL unless it parses and has the expected top-level type. An
-- object repeating a key (text a vendor sent as a string) is none: no map holds it, and casting
-- it failed every night's build.
create or replace temp macro json_of_type(raw, json_kind) as
    case when json_valid(raw) then
        case when json_type(raw::json) = json_kind
            and (json_kind <> 'OBJECT'
                or len(json_keys(raw::json)) = len(list_distinct(json_keys(raw::json))))
            then raw::json end
    end;

-- The extractor's own list of coerced values: a JSON array of {field, value, problem}.
-- An unreadable list is itself reported rather than lost.
create or replace temp macro ingest_issues(raw) as
    case
        when raw is null then []
        when json_of_type(raw, 'ARRAY') is not null
            then from_json(raw, '[{"field": "VARCHAR", "value": "VARCHAR", "problem": "VARCHAR"}]')
        else [issue('_ingest_issues', raw, 'unreadable list of ingest issues')]
    end;

-- Time zones. Local wall-clock time -> UTC is DuckDB's `local_ts AT TIME ZONE zone` (ICU): a wall
-- time that does not exist (DST gap) or exists twice (DST overlap) resolves to the LATER of its two
-- readings, as in PostgreSQL and pendulum (tests/test_timezones.py checks this against pendulum).
-- The helpers below only detect those cases; all arithmetic is in epoch microseconds so that the
-- connection's TimeZone setting cannot change any result.

-- The UTC offset (microseconds) that `zone` uses at the instant `utc_us` (microseconds since epoch).
create or replace temp macro utc_offset_us(zone, utc_us) as
    epoch_us(timezone(zone, timezone('UTC', make_timestamp(utc_us)))) - utc_us;

-- How many real instants show the wall-clock time `local_ts` in `zone`: 1 normally, 0 in a DST gap,
-- 2 in a DST overlap. Candidate offsets are those in force a day before and a day after (a zone never
-- changes offset twice within two days); a candidate counts only if the zone really uses that offset
-- at the instant it gives. NULL when the time or the zone is unknown.
create or replace temp macro wall_clock_readings(local_ts, zone) as
    case when local_ts is not null and zone is not null then len(list_distinct([
        u for u in [
            epoch_us(local_ts) - utc_offset_us(zone, epoch_us(local_ts) - 86400000000),
            epoch_us(local_ts) - utc_offset_us(zone, epoch_us(local_ts) + 86400000000)
        ] if utc_offset_us(zone, u) = epoch_us(local_ts) - u
    ])) end;
