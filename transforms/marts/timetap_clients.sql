-- depends_on: stg_timetap__packages_sold
--
-- analytics.timetap_clients: one row per TimeTap client, from the client object embedded in the
-- packages sold to them (TimeTap has no client list with details that the extractor reads).
-- Should versions of the object differ, the one of the latest package-sold version wins (latest
-- valid_from, then modifiedDate, then packageSoldId). Columns and meanings: timetap_clients.yml.
-- A package sold whose client object is not a JSON object is already a data issue and gives no
-- client here.

create or replace table analytics.timetap_clients as

with carried as (
    select account, client_id, package_sold_id, valid_from, modified_at, client_json
    from stg_timetap__packages_sold
    where client_json is not null and client_id is not null
),

latest as (
    select * from carried
    qualify row_number() over (
        partition by account, client_id
        order by valid_from desc, modified_at desc nulls last, package_sold_id desc nulls last
    ) = 1
),

final as (
    select
        client_id,
        client_json ->> 'firstName' as first_name,
        client_json ->> 'lastName' as last_name,
        client_json ->> 'emailAddress' as email_address,
        -- everything else the object holds, as JSON (NULL when nothing else)
        nullif(to_json(map_from_entries(list_filter(
            map_entries(cast(client_json as map(varchar, json))),
            lambda entry: entry.key not in ('clientId', 'firstName', 'lastName', 'emailAddress')
        ))), '{}')::json as other_fields,
        package_sold_id as from_package_sold_id,
        valid_from,
        account
    from latest
)

select * from final
order by account, client_id;
