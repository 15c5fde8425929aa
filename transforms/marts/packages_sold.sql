-- depends_on: stg_timetap__packages_sold
--
-- analytics.packages_sold: one row per package sold, as it is now (current version, not
-- deactivated: active true or unreadable). Unreadable values are NULL here and listed in
-- analytics.data_issues.
--
--   package_sold_id     BIGINT
--   business_id         BIGINT
--   client_id           BIGINT         the client it was sold to (clientId of the client object
--                                      only if the fetched-for id is missing)
--   package_id          BIGINT         packageId of the embedded pkg object
--   price               DECIMAL(18,2)
--   max_quantity        INTEGER        sessions included
--   used_quantity       INTEGER        sessions used
--   remaining_quantity  INTEGER        max - used, never below 0 (more used than included is a
--                                      data issue 'used quantity exceeds maximum')
--   status              VARCHAR        'OPEN' or 'CLOSED'; NULL for anything else (data issue)
--   purchased_at        TIMESTAMPTZ    purchaseDate (epoch ms); NULL if outside 2000..2100
--   expires_at          TIMESTAMPTZ    expireDate; NULL when none or unreadable
--   is_expired          BOOLEAN        expires_at has passed at build time; false without an
--                                      expiry date, NULL when it is unreadable
--   created_at          TIMESTAMPTZ
--   created_by          VARCHAR
--   modified_at         TIMESTAMPTZ
--   modified_by         VARCHAR
--   valid_from          TIMESTAMPTZ    when this version was first loaded
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.packages_sold as

with packages_sold as (
    select * from stg_timetap__packages_sold
    where is_current and active is distinct from false
),

final as (
    select
        package_sold_id,
        business_id,
        client_id,
        package_id,
        price,
        max_quantity,
        used_quantity,
        remaining_quantity,
        status,
        purchased_at,
        expires_at,
        is_expired,
        created_at,
        created_by,
        modified_at,
        modified_by,
        valid_from,
        account
    from packages_sold
)

select * from final
order by account, package_sold_id;
