-- depends_on: stg_timetap__packages__service_ids
--
-- analytics.package_services: which services each package in analytics.packages covers
-- (its service_ids), one row per distinct pair.
--
--   package_id  BIGINT
--   service_id  BIGINT
--
-- Entries that are not integers are left out here and listed in analytics.data_issues.

create or replace table analytics.package_services as

with services as (
    select * from stg_timetap__packages__service_ids
    where is_current and active and service_id is not null
),

final as (
    select distinct
        package_id,
        service_id
    from services
)

select * from final
order by package_id, service_id;
