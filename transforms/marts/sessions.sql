-- depends_on: stg_bizstim__sessions
-- incremental_key: session_id
--
-- analytics.sessions: one row per session as it is now (the current scd2 version; should two
-- current versions share an id, the latest valid_from wins). Unreadable values are NULL here and
-- listed in analytics.data_issues.
--
--   session_id              BIGINT       Bizstim session id
--   status                  VARCHAR      'open', 'canceled', 'missed', 'saved'; NULL = unknown code
--   is_group                BOOLEAN      group session (multi)
--   slots                   INTEGER      participants allowed
--   client_id               BIGINT
--   practitioner_id         BIGINT       pract_id, or pract_d when pract_id is empty
--   service_id, location_id, class_id, wage_id, client_due_id, recurr_id, custom_map_id
--                           BIGINT       as delivered (Bizstim uses 0 for "none")
--   temp_session_id         BIGINT       the original session of a temporary one (temp); 0 -> NULL
--   qb_invoice_id           VARCHAR      QuickBooks invoice id; '0' and '' -> NULL
--   is_confirmed            BOOLEAN      confirmed
--   is_displayed            BOOLEAN      shown in the online group booking list (display)
--   is_recurring            BOOLEAN      part of a recurring series (recurr_on)
--   has_reminder_sent       BOOLEAN      session_reminder
--   has_sms_sent            BOOLEAN      session_sms
--   is_moderation_required  BOOLEAN      needs moderating by staff (assessment_moderation)
--   has_assessment          BOOLEAN      assessment_present
--   description, note, private_note, other_note
--                           VARCHAR      session_description, session_note, ... as delivered
--   session_date            DATE         local date in the account's zone
--   local_start, local_end  TIMESTAMP    wall-clock start and end in the account's zone
--   timezone                VARCHAR      the account's IANA zone (canonical spelling when known)
--   start_utc, end_utc      TIMESTAMPTZ  the real instants; NULL when the zone is unknown. A wall time
--                                        in a DST gap or overlap takes the later of its two readings
--   duration_minutes        INTEGER      elapsed minutes between start_utc and end_utc
--   is_overnight            BOOLEAN      end time earlier than start time: the session ends next day
--   is_start_in_dst_gap     BOOLEAN      local_start does not exist (clocks jumped over it)
--   is_start_in_dst_overlap BOOLEAN      local_start happened twice (clocks turned back)
--   is_end_in_dst_gap, is_end_in_dst_overlap
--                           BOOLEAN      the same for local_end; all four NULL when time/zone unknown
--   valid_from              TIMESTAMPTZ  when this version was first loaded (_dlt_valid_from)
--   account   VARCHAR  the account the row belongs to, as listed in sources.<source>.accounts
--                      ('default' without a list); ids are unique within an account only

create or replace table analytics.sessions as

with sessions as (
    select * from stg_bizstim__sessions
    where is_current
),

final as (
    select
        session_id,
        status,
        is_group,
        slots,
        client_id,
        practitioner_id,
        service_id,
        location_id,
        class_id,
        wage_id,
        client_due_id,
        recurr_id,
        custom_map_id,
        temp_session_id,
        qb_invoice_id,
        is_confirmed,
        is_displayed,
        is_recurring,
        has_reminder_sent,
        has_sms_sent,
        is_moderation_required,
        has_assessment,
        description,
        note,
        private_note,
        other_note,
        session_date,
        local_start,
        local_end,
        timezone,
        start_utc,
        end_utc,
        duration_minutes,
        is_overnight,
        is_start_in_dst_gap,
        is_start_in_dst_overlap,
        is_end_in_dst_gap,
        is_end_in_dst_overlap,
        valid_from,
        account
    from sessions
)

select * from final
order by account, session_id;
