-- depends_on: stg_bizstim__sessions, stg_bizstim__sessions__cancel_clients
-- incremental_key: record_id
--
-- Replaces the problems of current Bizstim sessions in analytics.data_issues (see
-- 00_analytics_schema.sql): typing problems and the extractor's _ingest_issues, then malformed
-- cancellation entries. An incremental build limits the delete to the changed sessions.

delete from analytics.data_issues where source = 'bizstim' and entity = 'session';

insert into analytics.data_issues

with session_issues as (
    select account, record_id, unnest(issues) as issue
    from stg_bizstim__sessions
    where is_current
),

cancellation_issues as (
    select account, record_id, entry
    from stg_bizstim__sessions__cancel_clients
    where is_current and is_malformed
),

final as (
    select 'bizstim' as source, 'session' as entity, record_id,
        issue.field, issue.value, issue.problem, account
    from session_issues

    union all

    select 'bizstim', 'session', record_id,
        'cancel_clients', entry, 'malformed cancellation entry', account
    from cancellation_issues
)

select * from final;
