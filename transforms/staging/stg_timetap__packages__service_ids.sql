-- depends_on: stg_timetap__packages
--
-- One row per entry of a package version's service_ids (JSON array of integers; an integer in a
-- JSON string, "12", is accepted too). An entry that is not an integer gets service_id NULL and a
-- `problem`; a service_ids that is not a JSON array gives one row with a `problem`.

create or replace temp table stg_timetap__packages__service_ids as

with packages as (
    select account, record_id, package_id, is_current, active, service_ids
    from stg_timetap__packages
    where trim(service_ids) <> ''
),

parsed as (
    select *, json_of_type(service_ids, 'ARRAY') as services
    from packages
),

-- UNNEST in the SELECT list, not as a lateral join: a lateral unnest copies the whole JSON text
-- into every exploded row (memory = entries x length), see stg_bizstim__sessions__cancel_clients.
exploded as (
    select
        account,
        record_id,
        package_id,
        is_current,
        active,
        unnest(from_json(services, '["JSON"]')) as service
    from parsed
    where services is not null
),

entries as (
    select
        account,
        record_id,
        package_id,
        is_current,
        active,
        -- from_json turns a JSON null entry into SQL NULL: report it as the text 'null'.
        coalesce(service::varchar, 'null') as value,
        parse_int(service ->> '$') as service_id
    from exploded
),

final as (
    select
        account,
        record_id,
        package_id,
        is_current,
        active,
        service_id,
        value,
        case when service_id is null then 'not an integer service id' end as problem
    from entries

    union all

    select account, record_id, package_id, is_current, active, null, service_ids, 'not a valid JSON array'
    from parsed
    where services is null
)

select * from final;
