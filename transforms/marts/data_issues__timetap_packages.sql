-- depends_on: stg_timetap__packages
-- depends_on: stg_timetap__packages__service_ids, stg_timetap__packages__reason_list
--
-- Appends the problems of current TimeTap package versions (active or not) to
-- analytics.data_issues: typing problems, the extractor's _ingest_issues, then unreadable
-- service_ids and reason_list entries.

delete from analytics.data_issues where source = 'timetap' and entity = 'package';

insert into analytics.data_issues

with package_issues as (
    select account, record_id, unnest(issues) as issue
    from stg_timetap__packages
    where is_current
),

service_issues as (
    select account, record_id, value, problem
    from stg_timetap__packages__service_ids
    where is_current and problem is not null
),

reason_issues as (
    select account, record_id, value, problem
    from stg_timetap__packages__reason_list
    where is_current and problem is not null
),

final as (
    select 'timetap' as source, 'package' as entity, record_id,
        issue.field, issue.value, issue.problem, account
    from package_issues

    union all

    select 'timetap', 'package', record_id, 'service_ids', value, problem, account
    from service_issues

    union all

    select 'timetap', 'package', record_id, 'reason_list', value, problem, account
    from reason_issues
)

select * from final;
