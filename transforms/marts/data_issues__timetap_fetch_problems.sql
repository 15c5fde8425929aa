-- requires: timetap.fetch_problems
--
-- Appends the TimeTap clients whose packages sold could not be read in the last run (their list
-- answered 404) to analytics.data_issues: the other clients loaded, and this client's earlier
-- sales were kept rather than retired on a 404's word.

delete from analytics.data_issues where source = 'timetap' and entity = 'client';

insert into analytics.data_issues

with source as (
    select account, client_id, problem from raw_timetap__fetch_problems
),

final as (
    select 'timetap' as source, 'client' as entity, client_id as record_id,
        'packageSold/client' as field, '' as value, problem, account
    from source
)

select * from final;
