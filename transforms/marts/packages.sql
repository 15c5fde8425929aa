-- depends_on: stg_timetap__packages
--
-- analytics.packages: one row per package on offer now (current version not deactivated: active
-- true, or unreadable or missing and reported, as in packages_sold; retired packages stay in
-- analytics.package_history). Unreadable values are NULL here and listed in analytics.data_issues.
--
--   package_id                  BIGINT
--   business_id                 BIGINT
--   package_name                VARCHAR        name shown to clients
--   internal_name               VARCHAR        name shown to staff
--   description                 VARCHAR
--   price                       DECIMAL(18,2)
--   quantity                    INTEGER        services included
--   expire_in_days              INTEGER        days until a sold package expires
--   remind_when_below_quantity  INTEGER        remaining sessions that trigger a reminder
--   staff_rate_level            VARCHAR
--   allow_online                BOOLEAN        may be bought online (vendor's name, kept as is)
--   taxable                     BOOLEAN
--   active                      BOOLEAN        true, or NULL if unreadable; never false here
--   image_url                   VARCHAR
--   created_at                  TIMESTAMPTZ    createdDate (epoch ms); NULL if outside 2000..2100
--   created_by                  VARCHAR        createdUser
--   modified_at                 TIMESTAMPTZ    modifiedDate (epoch ms); NULL if outside 2000..2100
--   modified_by                 VARCHAR        modifiedUser
--   valid_from                  TIMESTAMPTZ    when this version was first loaded
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.packages as

with packages as (
    select * from stg_timetap__packages
    where is_current and active is distinct from false
),

final as (
    select
        package_id,
        business_id,
        package_name,
        internal_name,
        description,
        price,
        quantity,
        expire_in_days,
        remind_when_below_quantity,
        staff_rate_level,
        allow_online,
        taxable,
        active,
        image_url,
        created_at,
        created_by,
        modified_at,
        modified_by,
        valid_from,
        account
    from packages
)

select * from final
order by account, package_id;
