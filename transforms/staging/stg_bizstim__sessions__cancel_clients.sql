-- depends_on: stg_bizstim__sessions
--
-- One row per entry of a session's cancel_clients, for every version of the session.
-- cancel_clients is 'client_id|client_dues_id|temp_session_id,...' (e.g. '76|2328|479889,49|2329|479895').
-- Spaces around entries and parts are ignored; empty entries (',,' or a trailing ',') are skipped
-- silently and do not count for `position` (1-based among the non-empty entries).
-- Parts are read by position; a part that is not an integer is NULL. An entry without exactly three
-- integer parts is kept (NULLs where unreadable) and flagged is_malformed, reported as a data issue.

create or replace temp table stg_bizstim__sessions__cancel_clients as

with sessions as (
    select account, record_id, session_id, is_current, cancel_clients
    from stg_bizstim__sessions
    where trim(cancel_clients) <> ''
),

entry_lists as (
    select
        account,
        record_id,
        session_id,
        is_current,
        [trim(e) for e in string_split(cancel_clients, ',') if trim(e) <> ''] as entry_list
    from sessions
),

-- UNNEST in the SELECT list, never as a lateral join (`from sessions, unnest(...)`): DuckDB runs
-- a lateral unnest as a hash join on the correlated value, so every exploded row carries its own
-- copy of the whole cancel_clients text, entries x length bytes: one session with 4,000 entries
-- (96,000 characters) ran out of the default 512 MB, 50,000 entries would need ~60 GB. Here work
-- and memory are linear in the entries. Two unnests in one SELECT list advance together, so
-- generate_subscripts gives each entry its 1-based place in the list.
entries as (
    select
        account,
        record_id,
        session_id,
        is_current,
        unnest(entry_list) as entry,
        generate_subscripts(entry_list, 1) as position
    from entry_lists
),

split as (
    select *, [trim(p) for p in string_split(entry, '|')] as parts
    from entries
),

final as (
    select
        account,
        record_id,
        session_id,
        is_current,
        position::integer as position,
        entry,
        parse_int(parts[1]) as client_id,
        parse_int(parts[2]) as client_due_id,
        -- 0 means "no temp session", as in sessions.temp.
        nullif(parse_int(parts[3]), 0) as temp_session_id,
        len(parts) <> 3 or len([p for p in parts if parse_int(p) is null]) > 0 as is_malformed
    from split
)

select * from final;
