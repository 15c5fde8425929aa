-- depends_on: stg_timetap__packages
--
-- analytics.package_history: every version of every package the pipeline has seen (dlt scd2).
--
--   package_id, business_id                     BIGINT
--   version_number                              INTEGER      1, 2, ... per package by valid_from
--   package_name, internal_name, description    VARCHAR
--   price                                       DECIMAL(18,2)
--   quantity, expire_in_days                    INTEGER
--   allow_online, taxable, active               BOOLEAN
--   created_at, modified_at                     TIMESTAMPTZ
--   modified_by                                 VARCHAR
--   valid_from                                  TIMESTAMPTZ  when this version was first loaded
--   valid_to                                    TIMESTAMPTZ  when it was replaced or vanished; NULL if current
--   is_current                                  BOOLEAN      the package's current version
--   is_retired                                  BOOLEAN      this is the package's last version and
--                                                            no current active version is left
--                                                            (gone from GET /package, or active=false)
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.package_history as

with versions as (
    select * from stg_timetap__packages
),

final as (
    select
        package_id,
        business_id,
        version_number,
        package_name,
        internal_name,
        description,
        price,
        quantity,
        expire_in_days,
        allow_online,
        taxable,
        active,
        created_at,
        modified_at,
        modified_by,
        valid_from,
        valid_to,
        is_current,
        is_last_version and has_no_live_version as is_retired,
        account
    from versions
)

select * from final
order by account, package_id, version_number;
