//! Diesel table definitions for the reads written in diesel's DSL. A partial mirror of `migrations/`, on purpose:
//! `tasks` leaves out `heartbeat_at`, `timeout_secs`, `workflow_id`, `stage`, `pending_parents` and
//! `stage_on_failure` (diesel's 16-column limit; the statements that use them are SQL). See diesel.toml.

diesel::table! {
    tasks (id) {
        id -> Int8,
        action -> Text,
        payload -> Jsonb,
        dedup_key -> Text,
        state -> Text,
        priority -> Int2,
        attempts -> Int4,
        max_attempts -> Int4,
        run_at -> Timestamptz,
        acquired_at -> Nullable<Timestamptz>,
        cancel_requested -> Bool,
        result -> Nullable<Jsonb>,
        error -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    t_object (id) {
        id -> Int8,
        data -> Jsonb,
        created_dt -> Timestamptz,
    }
}

diesel::table! {
    t_exported_object (id) {
        id -> Int8,
        data -> Jsonb,
        created_dt -> Timestamptz,
    }
}
