-- Setup: the version-history columns of every scd2 staging model, defined once.
--
-- dlt keeps every version of a record (scd2): one row per version, valid from _dlt_valid_from
-- until _dlt_valid_to (NULL while the version is current). scd2_history('<relation>') returns
-- every row of <relation> (a table, or a CTE of the calling query, named as a string) with:
--
--   is_current           BOOLEAN  valid_to is NULL and no later version is current (should two
--                                 versions of a record be current, the later one wins)
--   version_number       INTEGER  1, 2, ... per record in (valid_from, load_id, row_key) order:
--                                 two versions of one load are ordered as they were stored, so
--                                 every build picks the same one (a night's parts arrive in
--                                 another order than a full rebuild's rows)
--   is_last_version      BOOLEAN  no later version of the record exists
--   has_no_live_version  BOOLEAN  no current version of the record is live (see is_live): the
--                                 record is gone (deleted, retired, deactivated)
--
-- <relation> must have the columns
--   row_key                     unique per row (the raw view's _raw_row); not returned
--   version_group               rows of one record share it (its id; a row without a readable id
--                               is a record of its own)
--   valid_from, valid_to, load_id
--   is_live                     BOOLEAN: this version, while current, keeps the record alive
--                               (sessions: always; packages: active = true)
--
-- A table macro rather than an intermediate model: DuckDB expands it inline into the staging
-- model's query, so no extra table is written. The window sorts only the six columns it needs,
-- and its four results are joined back to the rows by row_key: sorting the wide typed rows
-- themselves cost most of the staging model's time and memory. The calling model marks the
-- CTEs <relation> is built from `as not materialized`: DuckDB then reads the window's few
-- columns straight from the raw table, rather than keeping every wide row for the second use.

create or replace temp macro scd2_history(relation) as table
with history as (
    select
        row_key,
        valid_to is null
            and not coalesce(bool_or(valid_to is null) over (
                versions rows between 1 following and unbounded following), false) as is_current,
        (row_number() over versions)::integer as version_number,
        lead(valid_from) over versions is null as is_last_version,
        not coalesce(bool_or(valid_to is null and is_live) over (
            versions rows between unbounded preceding and unbounded following), false)
            as has_no_live_version
    from query_table(relation)
    window versions as (partition by version_group order by valid_from, load_id, row_key)
)
select rows.* exclude (row_key), history.* exclude (row_key)
from query_table(relation) as rows
join history using (row_key);
