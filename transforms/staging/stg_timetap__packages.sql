-- requires: timetap.packages
--
-- TimeTap packages, renamed and typed: every scd2 version (marts pick current rows via is_current).
-- Each row carries `issues`, the problems met while typing it; only those of current rows are
-- reported (marts/data_issues__timetap_packages.sql). service_ids and reason_list stay JSON text
-- here and are unpacked by the stg_timetap__packages__*.sql models.
--
-- GET /package lists active packages only, and DELETE just sets active=false: a retired package
-- either vanishes (dlt closes its last version) or shows up with active=false.

create or replace temp table stg_timetap__packages as

-- `not materialized` (here and below): scd2_history reads the rows twice (02_scd2_history.sql).
with source as not materialized (
    select * from raw_timetap__packages
),

renamed as not materialized (
    select
        account,
        package_id as record_id,
        parse_int(package_id) as package_id,
        parse_int(business_id) as business_id,
        package_name,
        internal_name,
        description,
        parse_decimal(price) as price,
        parse_int32(quantity) as quantity,
        parse_int32(expire_in_days) as expire_in_days,
        parse_int32(remind_when_below_quantity) as remind_when_below_quantity,
        staff_rate_level,
        parse_bool(allow_online) as allow_online,
        parse_bool(taxable) as taxable,
        parse_bool(active) as active,
        image_url,
        parse_epoch_ms(created_date) as created_at,
        created_user as created_by,
        parse_epoch_ms(modified_date) as modified_at,
        modified_user as modified_by,
        service_ids,
        reason_list,
        _dlt_valid_from as valid_from,
        _dlt_valid_to as valid_to,
        _dlt_load_id as load_id,
        _raw_row as row_key,
        -- Rows of one package share its id; a row without a readable id is a package of its own.
        -- The id as read: '501', ' 501' and '0501' are one package (as three groups they were
        -- three current rows of one key, failing every night's build); the latest wins.
        account || ':' || coalesce(cast(parse_int(package_id) as varchar), trim(package_id), _dlt_id)
            as version_group,
        list_filter([
            issue('package_id', source.package_id, int_problem(source.package_id)),
            issue('business_id', source.business_id, int_problem(source.business_id)),
            issue('price', source.price, decimal_problem(source.price)),
            issue('quantity', source.quantity, int32_problem(source.quantity)),
            issue('expire_in_days', source.expire_in_days, int32_problem(source.expire_in_days)),
            issue('remind_when_below_quantity', source.remind_when_below_quantity,
                int32_problem(source.remind_when_below_quantity)),
            issue('allow_online', source.allow_online, bool_problem(source.allow_online)),
            issue('taxable', source.taxable, bool_problem(source.taxable)),
            issue('active', source.active, bool_problem(source.active)),
            issue('created_date', source.created_date, dated_problem(source.created_date)),
            issue('modified_date', source.modified_date, dated_problem(source.modified_date))
        ], lambda i: i.problem is not null) || ingest_issues(source._ingest_issues) as issues
    from source
),

versions as not materialized (
    select
        *,
        -- Only a deactivated version takes a package off offer (DELETE just sets active=false);
        -- an unreadable or missing active (reported) keeps it, as for packages sold.
        active is distinct from false as is_live
    from renamed
),

-- is_current, version_number, is_last_version, has_no_live_version (02_scd2_history.sql)
final as (
    select * from scd2_history('versions')
)

select * from final;
