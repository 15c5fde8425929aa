-- depends_on: stg_timetap__packages
--
-- One row per entry of a package version's reason_list (JSON array of {"reasonId", "reasonDesc"}),
-- with `position` its 1-based place in the array. An entry that is not an object with an integer
-- reasonId is kept with NULLs and a `problem`; a reason_list that is not a JSON array gives one row
-- with position NULL and a `problem`.

create or replace temp table stg_timetap__packages__reason_list as

with packages as (
    select account, record_id, package_id, is_current, active, reason_list
    from stg_timetap__packages
    where trim(reason_list) <> ''
),

parsed as (
    select *, json_of_type(reason_list, 'ARRAY') as reasons
    from packages
),

reason_arrays as (
    select account, record_id, package_id, is_current, active, from_json(reasons, '["JSON"]') as reason_array
    from parsed
    where reasons is not null
),

-- UNNEST in the SELECT list, not as a lateral join: a lateral unnest copies the whole JSON text
-- into every exploded row (memory = entries x length), see stg_bizstim__sessions__cancel_clients.
-- The two unnests advance together: generate_subscripts is each entry's place in the array.
exploded as (
    select
        account,
        record_id,
        package_id,
        is_current,
        active,
        unnest(reason_array) as reason,
        generate_subscripts(reason_array, 1) as position
    from reason_arrays
),

entries as (
    select
        account,
        record_id,
        package_id,
        is_current,
        active,
        position::integer as position,
        -- from_json turns a JSON null entry into SQL NULL: report it as the text 'null'.
        coalesce(reason::varchar, 'null') as value,
        case when json_type(reason) = 'OBJECT' then reason end as reason
    from exploded
),

reasons as (
    select
        account,
        record_id,
        package_id,
        is_current,
        active,
        position,
        parse_int(reason ->> 'reasonId') as reason_id,
        reason ->> 'reasonDesc' as reason_description,
        value,
        case when parse_int(reason ->> 'reasonId') is null then 'malformed reason entry' end
            as problem
    from entries
),

unreadable_lists as (
    select
        account,
        record_id,
        package_id,
        is_current,
        active,
        null::integer as position,
        null::bigint as reason_id,
        null::varchar as reason_description,
        reason_list as value,
        'not a valid JSON array' as problem
    from parsed
    where reasons is null
),

final as (
    select * from reasons
    union all
    select * from unreadable_lists
)

select * from final;
