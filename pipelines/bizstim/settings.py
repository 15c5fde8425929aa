"""Bizstim constants from the vendor's reference page (../shared/api-docs/bizstim-sessions.txt)."""

DEFAULT_BASE_URL = "https://www.bizstim.com/api"
MAX_PAGE_SIZE = 1000  # the API silently caps `limit` here

# every field the reference page documents; `pract_d` (the table) and `pract_id` (the examples)
# both name the practitioner, so both columns exist and the transforms coalesce them
SESSION_FIELDS = (
    "id",
    "confirmed",
    "multi",
    "slots",
    "class_id",
    "display",
    "pract_id",
    "pract_d",
    "wage_id",
    "client_id",
    "client_due_id",
    "cancel_clients",
    "temp",
    "service_id",
    "location_id",
    "recurr_id",
    "recurr_on",
    "qb_invoice_id",
    "session_status",
    "custom_map_id",
    "session_reminder",
    "session_sms",
    "session_description",
    "session_date",
    "session_start_time",
    "session_end_time",
    "session_note",
    "session_private_note",
    "session_other_note",
    "assessment_moderation",
    "assessment_present",
)
# a row without these is still loaded, and reported
REQUIRED_FIELDS = ("id", "session_date", "session_start_time", "session_end_time", "session_status")
TIMEZONE_COLUMN = "timezone"
