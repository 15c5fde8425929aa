-- depends_on: stg_timetap__packages_sold
--
-- Appends the problems of current TimeTap packages sold to analytics.data_issues: typing
-- problems (including more used than included) and the extractor's _ingest_issues.

delete from analytics.data_issues where source = 'timetap' and entity = 'package_sold';

insert into analytics.data_issues

with package_sold_issues as (
    select account, record_id, unnest(issues) as issue
    from stg_timetap__packages_sold
    where is_current
),

final as (
    select 'timetap' as source, 'package_sold' as entity, record_id,
        issue.field, issue.value, issue.problem, account
    from package_sold_issues
)

select * from final;
