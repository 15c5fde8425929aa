-- depends_on: stg_timetap__packages_sold
--
-- analytics.package_sold_history: every version of every package sold (dlt scd2).
--
--   package_sold_id, client_id, package_id           BIGINT
--   version_number                                    INTEGER      1, 2, ... by valid_from
--   status                                            VARCHAR
--   max_quantity, used_quantity, remaining_quantity   INTEGER
--   price                                             DECIMAL(18,2)
--   purchased_at, expires_at, modified_at             TIMESTAMPTZ
--   active                                            BOOLEAN
--   valid_from, valid_to                              TIMESTAMPTZ  the version's validity (valid_to
--                                                                  NULL while current)
--   is_current                                        BOOLEAN
--   is_retired                                        BOOLEAN      last version, and no current
--                                                                  version that is not deactivated
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.package_sold_history as

with versions as (
    select * from stg_timetap__packages_sold
),

final as (
    select
        package_sold_id,
        client_id,
        package_id,
        version_number,
        status,
        max_quantity,
        used_quantity,
        remaining_quantity,
        price,
        purchased_at,
        expires_at,
        modified_at,
        active,
        valid_from,
        valid_to,
        is_current,
        is_last_version and has_no_live_version as is_retired,
        account
    from versions
)

select * from final
order by account, package_sold_id, version_number;
