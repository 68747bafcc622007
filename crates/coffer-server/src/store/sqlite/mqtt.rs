//! The SQLite side of [`crate::store::mqtt`]: the shared statements.

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::store::mqtt::{
    out_of_step_sql, standing_sql, BrokerState, OutOfStep, CONFIRM_SQL, FORGET_SQL, NOTE_SQL,
};
use crate::store::{db_error, StoreError};

impl SqliteStore {
    pub(in crate::store) async fn mqtt_standing(
        &self,
        org_id: i64,
        device_id: i64,
    ) -> Result<Option<BrokerState>, StoreError> {
        let op = "reading a device's standing";
        self.with(op, move |conn| {
            conn.query_row(&standing_sql(), params![device_id, org_id], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map(|s| s.as_deref().map(BrokerState::from_db))
            .map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn mqtt_note(
        &self,
        org_id: i64,
        device_id: i64,
        now: i64,
        state: BrokerState,
    ) -> Result<(), StoreError> {
        let op = "noting an MQTT client";
        self.with(op, move |conn| {
            conn.execute(NOTE_SQL, params![device_id, org_id, now, state.as_str()])
                .map(drop)
                .map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn mqtt_confirm(
        &self,
        device_id: i64,
        was: BrokerState,
        now: BrokerState,
    ) -> Result<bool, StoreError> {
        let op = "confirming an MQTT client";
        self.with(op, move |conn| {
            let changed = if now == BrokerState::Deleted {
                conn.execute(FORGET_SQL, params![device_id, was.as_str()])
            } else {
                conn.execute(CONFIRM_SQL, params![now.as_str(), device_id, was.as_str()])
            };
            changed.map(|n| n > 0).map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn mqtt_out_of_step(
        &self,
        limit: i64,
    ) -> Result<Vec<OutOfStep>, StoreError> {
        let op = "listing MQTT clients out of step";
        self.with(op, move |conn| {
            let e = db_error(op);
            let mut stmt = conn.prepare(&out_of_step_sql()).map_err(|x| e(&x))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(OutOfStep {
                        device_id: r.get(0)?,
                        org_id: r.get(1)?,
                        broker: BrokerState::from_db(&r.get::<_, String>(2)?),
                        desired: BrokerState::from_db(&r.get::<_, String>(3)?),
                    })
                })
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| e(&x))
        })
        .await
    }
}
