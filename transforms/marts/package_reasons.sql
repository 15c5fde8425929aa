-- depends_on: stg_timetap__packages__reason_list
--
-- analytics.package_reasons: the reasons attached to each package in analytics.packages
-- (its reason_list), in list order.
--
--   package_id          BIGINT
--   position            INTEGER  1-based place in reason_list
--   reason_id           BIGINT   reasonId; NULL if unreadable (then also in analytics.data_issues)
--   reason_description  VARCHAR  reasonDesc
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.package_reasons as

with reasons as (
    select * from stg_timetap__packages__reason_list
    where is_current and active is distinct from false and position is not null
),

final as (
    select
        package_id,
        position,
        reason_id,
        reason_description,
        account
    from reasons
)

select * from final
order by account, package_id, position;
