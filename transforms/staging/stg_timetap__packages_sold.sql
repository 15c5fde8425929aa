-- requires: timetap.packages_sold
--
-- TimeTap packages sold, renamed and typed: every scd2 version (marts pick current rows via
-- is_current). Each row carries `issues`; only those of current rows are reported
-- (marts/data_issues__timetap_packages_sold.sql).

create or replace temp table stg_timetap__packages_sold as

-- `not materialized` (here and below): scd2_history reads the rows twice (02_scd2_history.sql).
with source as not materialized (
    select * from raw_timetap__packages_sold
),

parsed as not materialized (
    select
        *,
        json_of_type(client, 'OBJECT') as client_json,
        json_of_type(pkg, 'OBJECT') as pkg_json
    from source
),

renamed as not materialized (
    select
        account,
        package_sold_id as record_id,
        parse_int(package_sold_id) as package_sold_id,
        parse_int(business_id) as business_id,
        -- The client the row was fetched for; the embedded client object only as a fallback.
        coalesce(parse_int(client_id), parse_int(client_json ->> 'clientId')) as client_id,
        parse_int(pkg_json ->> 'packageId') as package_id,
        client_json,  -- the embedded client object (marts/timetap_clients.sql)
        parse_decimal(price) as price,
        parse_int32(max_quantity) as max_quantity,
        parse_int32(used_quantity) as used_quantity,
        case when upper(trim(status)) in ('OPEN', 'CLOSED') then upper(trim(status)) end as status,
        parse_epoch_ms(purchase_date) as purchased_at,
        parse_epoch_ms(expire_date) as expires_at,
        -- No expiry date at all means the package never expires; an unreadable one is unknown.
        case
            when coalesce(trim(expire_date), '') = '' then false
            else parse_epoch_ms(expire_date) < current_timestamp
        end as is_expired,
        parse_epoch_ms(created_date) as created_at,
        created_user as created_by,
        parse_epoch_ms(modified_date) as modified_at,
        modified_user as modified_by,
        parse_bool(active) as active,
        _dlt_valid_from as valid_from,
        _dlt_valid_to as valid_to,
        _dlt_load_id as load_id,
        _raw_row as row_key,
        -- The id as read: '501', ' 501' and '0501' are one package sold (as three groups they were
        -- three current rows of one key, failing every night's build); the latest wins.
        account || ':' || coalesce(cast(parse_int(package_sold_id) as varchar), trim(package_sold_id), _dlt_id)
            as version_group,
        list_filter([
            issue('package_sold_id', parsed.package_sold_id, int_problem(parsed.package_sold_id)),
            issue('business_id', parsed.business_id, int_problem(parsed.business_id)),
            issue('client_id', parsed.client_id, int_problem(parsed.client_id)),
            issue('client', parsed.client,
                case when parsed.client is not null and client_json is null
                    then 'not a valid JSON object' end),
            issue('pkg', parsed.pkg,
                case
                    when parsed.pkg is not null and pkg_json is null then 'not a valid JSON object'
                    when pkg_json is not null and parse_int(pkg_json ->> 'packageId') is null
                        then 'no integer packageId in pkg'
                end),
            issue('price', parsed.price, decimal_problem(parsed.price)),
            issue('max_quantity', parsed.max_quantity,
                coalesce(int32_problem(parsed.max_quantity),
                    case when parse_int(parsed.max_quantity) < 0 then 'negative quantity' end)),
            issue('used_quantity', parsed.used_quantity,
                coalesce(
                    int32_problem(parsed.used_quantity),
                    case when parse_int(parsed.used_quantity) < 0 then 'negative quantity' end,
                    case when parse_int(parsed.used_quantity) > parse_int(parsed.max_quantity)
                        and parse_int(parsed.max_quantity) >= 0
                        then 'used quantity exceeds maximum' end
                )),
            issue('status', parsed.status,
                case when parsed.status is not null and upper(trim(parsed.status)) not in ('OPEN', 'CLOSED')
                    then 'unknown status' end),
            -- an empty expire_date means "never expires"; any other date must not be empty
            issue('purchase_date', parsed.purchase_date, dated_problem(parsed.purchase_date)),
            issue('expire_date', parsed.expire_date, epoch_ms_problem(parsed.expire_date)),
            issue('created_date', parsed.created_date, dated_problem(parsed.created_date)),
            issue('modified_date', parsed.modified_date, dated_problem(parsed.modified_date)),
            issue('active', parsed.active, bool_problem(parsed.active))
        ], lambda i: i.problem is not null) || ingest_issues(parsed._ingest_issues) as issues
    from parsed
),

versions as not materialized (
    select
        *,
        -- Never negative: using more than the maximum is reported as a data issue instead.
        -- (greatest() skips NULLs, so an unknown quantity is handled before it.) A negative
        -- quantity (reported) leaves it unknown: -3 used of 10 is not 13 left.
        case when max_quantity >= 0 and used_quantity >= 0
            then greatest(max_quantity - used_quantity, 0) end as remaining_quantity,
        -- Retired: no current version that is not deactivated (an unreadable active still counts).
        active is distinct from false as is_live
    from renamed
),

-- is_current, version_number, is_last_version, has_no_live_version (02_scd2_history.sql)
final as (
    select * from scd2_history('versions')
)

select * from final;
