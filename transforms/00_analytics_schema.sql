-- Setup: the analytics schema and an empty data_issues table.
-- data_issues is made anew by every full build; the marts/data_issues__*.sql files of the
-- sources that are present first delete their own rows, then append, so it never keeps rows of a
-- source that is gone. An incremental build (pipelines/incremental.py) keeps the table (this
-- statement becomes `create table if not exists`) and replaces the changed records' rows.
--
-- analytics.data_issues: one row per problem found in a CURRENT raw record.
--   source     VARCHAR  'bizstim' or 'timetap'
--   entity     VARCHAR  'session', 'package', 'package_sold' or 'client' (a client whose list failed)
--   record_id  VARCHAR  the record's id exactly as delivered (text, so a garbage id is still shown)
--   field      VARCHAR  the raw field name ('session_date', 'cancel_clients', 'used_quantity', ...)
--   value      VARCHAR  the raw value as delivered
--   problem    VARCHAR  a short sentence: 'not a valid date', 'unknown time zone', ...
--   account    VARCHAR  the account the record belongs to (sources.<source>.accounts; 'default')

create schema if not exists analytics;

create or replace table analytics.data_issues (
    source varchar,
    entity varchar,
    record_id varchar,
    field varchar,
    value varchar,
    problem varchar,
    account varchar
);
