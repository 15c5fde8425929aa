-- depends_on: stg_bizstim__sessions__cancel_clients
-- incremental_key: session_id
--
-- analytics.session_cancellations: one row per client who cancelled from a current session
-- (one entry of cancel_clients).
--
--   session_id       BIGINT   the session cancelled from
--   position         INTEGER  1-based order of the entry in cancel_clients, counting non-empty entries
--   client_id        BIGINT   the client who cancelled
--   client_due_id    BIGINT   the client's cost record
--   temp_session_id  BIGINT   the temporary session kept for the client; 0 -> NULL
--
-- A malformed entry still gives a row (NULL where a part is unreadable) and a data issue.
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.session_cancellations as

with cancellations as (
    select * from stg_bizstim__sessions__cancel_clients
    where is_current
),

final as (
    select
        session_id,
        position,
        client_id,
        client_due_id,
        temp_session_id,
        account
    from cancellations
)

select * from final
order by account, session_id, position;
