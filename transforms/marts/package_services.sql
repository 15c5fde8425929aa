-- depends_on: stg_timetap__packages__service_ids
--
-- analytics.package_services: which services each package in analytics.packages covers
-- (its service_ids), one row per distinct pair.
--
--   package_id  BIGINT
--   service_id  BIGINT
--
-- Entries that are not integers are left out here and listed in analytics.data_issues.
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.package_services as

with services as (
    select * from stg_timetap__packages__service_ids
    where is_current and active is distinct from false and service_id is not null
),

final as (
    select distinct
        package_id,
        service_id,
        account
    from services
)

select * from final
order by account, package_id, service_id;
